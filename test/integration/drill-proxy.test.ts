import { afterEach, describe, expect, it } from 'vitest';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { TcpProxy, parseTarget } from '../../src/drill/proxy.js';

/** An echo server on a free loopback port (real sockets: the proxy is plain TCP). */
function echoServer(): Promise<{ server: Server; port: number }> {
  return new Promise((resolve) => {
    const server = createServer((s) => s.pipe(s));
    server.listen(0, '127.0.0.1', () =>
      resolve({ server, port: (server.address() as { port: number }).port }),
    );
  });
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Resolves with the next `n` bytes the socket receives. */
function read(s: Socket, n: number, timeoutMs = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const t = setTimeout(() => {
      s.off('data', on);
      reject(new Error(`got '${got}' of ${n} bytes within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (d: Buffer): void => {
      got += d.toString();
      if (got.length >= n) {
        clearTimeout(t);
        s.off('data', on);
        resolve(got);
      }
    };
    s.on('data', on);
  });
}

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

describe('drill TCP proxy (partition scenario)', () => {
  it('forwards, blackholes on cut without closing, refuses new connections, and delivers held bytes on heal', async () => {
    const { server, port } = await echoServer();
    cleanup.push(() => new Promise<void>((r) => server.close(() => r())));
    const proxy = await TcpProxy.start(`nats://127.0.0.1:${port}`);
    cleanup.push(() => proxy.close());
    const s = await open(proxy.port);
    cleanup.push(() => void s.destroy());
    let closed = false;
    s.on('close', () => (closed = true));

    s.write('hello');
    expect(await read(s, 5)).toBe('hello');
    expect(proxy.connections).toBe(1);

    proxy.cut();
    s.write('during');
    // Nothing comes back while cut: the echo never sees the bytes, or its reply is held.
    await expect(read(s, 1, 500)).rejects.toThrow(/got '' of 1 bytes/);
    expect(closed).toBe(false);
    // A new connection is refused (accepted and reset at once).
    const refused = await new Promise<string>((resolve) => {
      const c = connect({ host: '127.0.0.1', port: proxy.port });
      c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      c.once('close', () => resolve('closed'));
    });
    expect(['ECONNRESET', 'closed']).toContain(refused);
    expect(proxy.refused).toBe(1);

    const back = read(s, 6);
    proxy.heal();
    expect(await back).toBe('during');
    s.write('after');
    expect(await read(s, 5)).toBe('after');
    expect(closed).toBe(false);
  });

  it('rejects a target that is not host:port, naming it', () => {
    expect(() => parseTarget('nats://a:1,nats://b:2')).toThrow(/is not host:port/);
    expect(() => parseTarget('localhost')).toThrow(/is not host:port/);
    expect(parseTarget('nats://127.0.0.1:4222')).toEqual({ host: '127.0.0.1', port: 4222 });
  });
});
