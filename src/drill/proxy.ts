/**
 * A TCP proxy the drill owns, to partition one node from NATS without touching the server or
 * the other node. Every connection accepted on the proxy's loopback port is forwarded to the
 * target, byte for byte.
 *
 * `cut()` is a blackhole, as a network partition looks to both ends: nothing is forwarded in
 * either direction, the sockets stay open (no FIN, no RST, so neither end learns anything from
 * TCP), and new connections are refused (accepted and reset at once). Bytes sent meanwhile wait
 * in the proxy's buffers, as they would in TCP retransmission. `heal()` forwards them and
 * everything after them again, and accepts new connections.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

/** Where a proxy forwards to. */
export interface ProxyTarget {
  host: string;
  port: number;
}

/** Parses `nats://host:port` (or `host:port`) into a target; throws naming what is wrong. */
export function parseTarget(url: string): ProxyTarget {
  const m = /^(?:[a-z]+:\/\/)?(\[[^\]]+\]|[^:/]+):(\d+)\/?$/i.exec(url.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 1 && port <= 65_535)) {
    throw new Error(
      `proxy target '${url}' is not host:port (or nats://host:port with a port 1-65535): pass a single server URL`,
    );
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

interface Pair {
  client: Socket;
  upstream: Socket;
}

/** A forwarding TCP proxy on 127.0.0.1 that can be cut (blackholed) and healed. */
export class TcpProxy {
  readonly port: number;
  readonly target: ProxyTarget;
  readonly #server: Server;
  readonly #pairs = new Set<Pair>();
  #cut = false;
  #refused = 0;

  private constructor(server: Server, port: number, target: ProxyTarget) {
    this.#server = server;
    this.port = port;
    this.target = target;
  }

  /** Starts a proxy on a free loopback port, forwarding to `target` (`nats://host:port`). */
  static start(target: string | ProxyTarget): Promise<TcpProxy> {
    const t = typeof target === 'string' ? parseTarget(target) : target;
    if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65_535 || !t.host) {
      throw new Error(`proxy target ${JSON.stringify(t)} needs a host and a port 1-65535`);
    }
    return new Promise((resolve, reject) => {
      let proxy: TcpProxy | undefined;
      const server = createServer({ pauseOnConnect: true }, (client) => proxy?.accept(client));
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        proxy = new TcpProxy(server, (server.address() as { port: number }).port, t);
        resolve(proxy);
      });
    });
  }

  /** `nats://127.0.0.1:<port>`: the URL a node uses to reach the target through the proxy. */
  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** Whether the proxy is cut. */
  get isCut(): boolean {
    return this.#cut;
  }

  /** Open forwarded connections. */
  get connections(): number {
    return this.#pairs.size;
  }

  /** Connections refused while cut. */
  get refused(): number {
    return this.#refused;
  }

  /** Stops forwarding in both directions, keeping the sockets open; refuses new connections. */
  cut(): void {
    if (this.#cut) return;
    this.#cut = true;
    for (const p of this.#pairs) this.#stop(p);
  }

  /** Forwards again, starting with what was held back while cut. */
  heal(): void {
    if (!this.#cut) return;
    this.#cut = false;
    for (const p of this.#pairs) this.#flow(p);
  }

  /** Closes every connection and the listening socket. */
  close(): Promise<void> {
    for (const p of this.#pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.#pairs.clear();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    if (this.#cut) {
      this.#refused++;
      client.resetAndDestroy();
      return;
    }
    const upstream = connect({ host: this.target.host, port: this.target.port });
    const pair: Pair = { client, upstream };
    this.#pairs.add(pair);
    const end = (): void => {
      if (!this.#pairs.delete(pair)) return;
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    if (!this.#cut) this.#flow(pair);
    else this.#stop(pair);
  }

  #flow(p: Pair): void {
    p.client.pipe(p.upstream);
    p.upstream.pipe(p.client);
  }

  #stop(p: Pair): void {
    p.client.unpipe(p.upstream);
    p.upstream.unpipe(p.client);
    p.client.pause();
    p.upstream.pause();
  }
}
