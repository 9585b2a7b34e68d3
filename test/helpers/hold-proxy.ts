/**
 * A loopback TCP proxy that can hold back what a client sends (client → server) while still
 * passing the server's replies, and reads the NATS frames it holds. The zombie test puts it
 * between a primary and its relay: the primary's frames then sit in the proxy, exactly as they
 * would sit in a frozen host's socket buffers, and reach the relay later, after a fence.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { decodePart, type FramePart } from '../../src/protocol/frame.js';

interface Pair {
  client: Socket;
  upstream: Socket;
  held: Buffer[];
}

export class HoldProxy {
  readonly #server: Server;
  readonly #pairs = new Set<Pair>();
  readonly #listeners = new Set<() => void>();
  #holding = false;
  /** Every byte held back since `hold()` (all connections, in arrival order). */
  held = Buffer.alloc(0);
  /** Every byte the server sent to the client since `release()`. */
  repliesAfterRelease = Buffer.alloc(0);
  #released = false;
  readonly port: number;

  private constructor(server: Server, port: number) {
    this.#server = server;
    this.port = port;
  }

  /** Starts a proxy on a free loopback port, forwarding to `target` (`nats://host:port`). */
  static start(target: string): Promise<HoldProxy> {
    const url = new URL(target);
    const host = url.hostname;
    const port = Number(url.port || 4222);
    return new Promise((resolve, reject) => {
      let proxy: HoldProxy | undefined;
      const server = createServer((client) => proxy?.accept(client, host, port));
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        proxy = new HoldProxy(server, (server.address() as { port: number }).port);
        resolve(proxy);
      });
    });
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** From now on, bytes from clients are kept here instead of being forwarded. */
  hold(): void {
    this.#holding = true;
  }

  /** Forwards everything held, in order, and everything after it. */
  release(): void {
    this.#holding = false;
    this.#released = true;
    for (const p of this.#pairs) {
      for (const b of p.held.splice(0)) p.upstream.write(b);
    }
  }

  /**
   * The payloads of the messages held back for `app`'s frames (`rp.<app>.frames`), in order;
   * a message not yet complete in the buffer is left out.
   */
  heldMessages(app: string): Buffer[] {
    const text = this.held.toString('latin1');
    const out: Buffer[] = [];
    const verb = `HPUB rp.${app}.frames `;
    for (let at = text.indexOf(verb); at >= 0; at = text.indexOf(verb, at + 1)) {
      const eol = text.indexOf('\r\n', at);
      if (eol < 0) break;
      const fields = text.slice(at, eol).split(' ');
      const hdr = Number(fields[fields.length - 2]);
      const total = Number(fields[fields.length - 1]);
      const start = eol + 2;
      if (start + total > this.held.length) break;
      out.push(this.held.subarray(start + hdr, start + total));
    }
    return out;
  }

  /** The restartpoint frame parts held back for `app`, decoded (see `heldMessages`). */
  heldParts(app: string): FramePart[] {
    return this.heldMessages(app).map((m) => decodePart(m, app));
  }

  /** JetStream publish acks for `stream` the server sent back since `release()`. */
  acksAfterRelease(stream: string): number {
    return this.repliesAfterRelease.toString('latin1').split(`"stream":"${stream}"`).length - 1;
  }

  /** Resolves once `pred()` holds, checked at every byte that passes or is held. */
  until(pred: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!pred()) return;
        this.#listeners.delete(check);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#listeners.delete(check);
        reject(new Error(`proxy: no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#listeners.add(check);
    });
  }

  close(): Promise<void> {
    for (const p of this.#pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #changed(): void {
    for (const l of [...this.#listeners]) l();
  }

  private accept(client: Socket, host: string, port: number): void {
    const upstream = connect({ host, port });
    const pair: Pair = { client, upstream, held: [] };
    this.#pairs.add(pair);
    const end = (): void => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.on('data', (b: Buffer) => {
      if (this.#holding) {
        pair.held.push(b);
        this.held = Buffer.concat([this.held, b]);
      } else {
        upstream.write(b);
      }
      this.#changed();
    });
    upstream.on('data', (b: Buffer) => {
      client.write(b);
      if (this.#released) this.repliesAfterRelease = Buffer.concat([this.repliesAfterRelease, b]);
      this.#changed();
    });
  }
}
