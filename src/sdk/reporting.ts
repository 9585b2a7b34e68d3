/**
 * What a node tells the operator about itself: one log event and one observer call per state
 * transition of its failover controller, the observer's figures, and its presence record in the
 * lease bucket (rewritten every `PRESENCE_EVERY_MS`, read by `restartpoint status`). A primary's
 * presence tick also looks for a switchover request addressed to its epoch.
 */
import { hostname } from 'node:os';
import type { KV } from '@nats-io/kv';
import type { NodeState, Observer, RelayLagSample } from '../observability/observer.js';
import {
  PRESENCE_EVERY_MS,
  deletePresence,
  presenceKey,
  readSwitchover,
  writePresence,
  type RelayStateSample,
  type SwitchoverRequest,
} from '../transport/presence.js';
import type { LogEvent } from '../types.js';

type Calls = { [K in keyof Observer]-?: Parameters<NonNullable<Observer[K]>>[0] };

/** What a reporter needs. */
export interface ReporterOptions {
  readonly app: string;
  readonly nodeId: string;
  readonly log: (e: LogEvent) => void;
  readonly observer: Observer | undefined;
  /** The app's lease bucket (presence records live beside the lease). */
  readonly kv: KV;
  readonly leaseKey: string;
  /**
   * What the presence record says about versions (docs/upgrades.md): the app's `stateVersion`,
   * the wire version, and why this node could not resume (undefined: it can).
   */
  readonly versions?: {
    readonly stateVersion: number;
    readonly protocolVersion: number;
    readonly resumeProblem: () => string | undefined;
  };
  /** Whether this node may build bases (presence `buildsBases`; default true). */
  readonly buildsBases?: boolean;
}

/** Reports one node's state, figures and presence. */
export class NodeReporter {
  state: NodeState | undefined;
  epoch = 0;
  /** Last acknowledged (primary) or committed (standby) checkpoint. */
  checkpoint = 0;
  readonly #o: ReporterOptions;
  #timer: NodeJS.Timeout | undefined;
  #sample: (() => Promise<RelayLagSample[]>) | undefined;
  #relayStates: (() => RelayStateSample[]) | undefined;
  #onSwitchover: ((req: SwitchoverRequest) => void) | undefined;
  #stopped = false;
  #tick: Promise<void> = Promise.resolve();
  #observerFailed = false;

  constructor(o: ReporterOptions) {
    this.#o = o;
  }

  /** Calls the observer's `k`, if it has one; a throwing observer is logged once, never fatal. */
  observe<K extends keyof Calls>(k: K, arg: Calls[K]): void {
    const fn = this.#o.observer?.[k] as ((a: Calls[K]) => void) | undefined;
    if (!fn) return;
    try {
      fn.call(this.#o.observer, arg);
    } catch (err) {
      if (this.#observerFailed) return;
      this.#observerFailed = true;
      this.#o.log({ level: 'error', msg: 'observer threw', method: k, error: (err as Error)?.message });
    }
  }

  /** The failover controller moved to `to`: one log event and one observer call. */
  transition(to: NodeState, reason?: string): void {
    const from = this.state;
    if (from === to) return;
    this.state = to;
    const level = to === 'demoted' ? 'warn' : 'info';
    this.#o.log({ level, msg: 'state transition', from: from ?? null, to, epoch: this.epoch, reason });
    this.observe('transition', {
      nodeId: this.#o.nodeId,
      app: this.#o.app,
      from,
      to,
      epoch: this.epoch,
      reason,
    });
    // A new state shows in `status` at once, not a tick later.
    if (this.#timer) this.#kick();
  }

  /**
   * Starts (or re-targets) the presence tick: `sample` gives a standby's lag per relay;
   * `onSwitchover` (a primary) receives a switchover request for this node's epoch.
   */
  present(opts: {
    sample?: () => Promise<RelayLagSample[]>;
    onSwitchover?: (req: SwitchoverRequest) => void;
    /** Each relay as this node sees it (connected, pending, backfilling, backlog); kept when not given. */
    relayStates?: () => RelayStateSample[];
  }): void {
    this.#sample = opts.sample;
    if (opts.relayStates) this.#relayStates = opts.relayStates;
    this.#onSwitchover = opts.onSwitchover;
    if (!this.#timer && !this.#stopped) this.#kick();
  }

  #kick(): void {
    clearTimeout(this.#timer);
    this.#tick = this.#tick.then(() => this.#once()).catch(() => undefined);
    this.#timer = setTimeout(() => this.#kick(), PRESENCE_EVERY_MS);
    this.#timer.unref();
  }

  async #once(): Promise<void> {
    if (this.#stopped || !this.state) return;
    const kv = this.#o.kv;
    let relays: RelayLagSample[] = [];
    if (this.#sample) {
      relays = await this.#sample().catch(() => []);
      const leader = await this.#leaderCheckpoint().catch(() => undefined);
      if (leader !== undefined) {
        const behind = Math.max(0, leader - this.checkpoint);
        relays = relays.map((r) => ({ ...r, checkpoints: behind }));
      }
      this.observe('lag', relays);
    }
    if (this.#stopped) return;
    await writePresence(kv, {
      nodeId: this.#o.nodeId,
      state: this.state,
      epoch: this.epoch,
      checkpoint: this.checkpoint,
      host: hostname(),
      pid: process.pid,
      updatedAt: Date.now(),
      relays,
      ...(this.#relayStates ? { relayStates: this.#relayStates() } : {}),
      ...this.#versions(),
      buildsBases: this.#o.buildsBases !== false,
    }).catch((err: unknown) =>
      this.#o.log({ level: 'debug', msg: 'presence not written', error: (err as Error)?.message }),
    );
    const onSwitchover = this.#onSwitchover;
    if (onSwitchover) {
      const req = await readSwitchover(kv).catch(() => undefined);
      if (req && req.epoch === this.epoch && !this.#stopped) onSwitchover(req);
    }
  }

  /** The version fields of the presence record (none without `versions`). */
  #versions(): {
    stateVersion?: number;
    protocolVersion?: number;
    canResume?: boolean;
    cannotResume?: string;
  } {
    const v = this.#o.versions;
    if (!v) return {};
    // A primary is running its state: it resumed already.
    const problem = this.state === 'primary' ? undefined : v.resumeProblem();
    return {
      stateVersion: v.stateVersion,
      protocolVersion: v.protocolVersion,
      canResume: problem === undefined,
      ...(problem !== undefined ? { cannotResume: problem } : {}),
    };
  }

  /** The leader's last checkpoint, from its presence record. */
  async #leaderCheckpoint(): Promise<number | undefined> {
    const e = await this.#o.kv.get(this.#o.leaseKey);
    if (!e || e.operation !== 'PUT') return undefined;
    const holder = (JSON.parse(Buffer.from(e.value).toString('utf8')) as { holder?: unknown }).holder;
    if (typeof holder !== 'string') return undefined;
    const p = await this.#o.kv.get(presenceKey(holder));
    if (!p || p.operation !== 'PUT') return undefined;
    const cp = (JSON.parse(Buffer.from(p.value).toString('utf8')) as { checkpoint?: unknown }).checkpoint;
    return typeof cp === 'number' ? cp : undefined;
  }

  /** Stops the tick; with `remove`, deletes the presence record (a clean close). */
  async stop(remove: boolean): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#tick;
    if (remove) await deletePresence(this.#o.kv, this.#o.nodeId).catch(() => undefined);
  }
}
