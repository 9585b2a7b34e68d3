/**
 * Issue 11, "seen from outside": three relays, `ack: 'quorum'`, never more than one relay down.
 *
 * 1. Primary `a` (the sample app, a real process) checkpoints with writes; `b` and `c` stand by.
 *    `a` holds after 5 checkpoints until relay 0 is down, then makes 300 more.
 * 2. Relay 0 is SIGKILLed (its store dir kept) and stays down across a takeover: `a` is
 *    SIGKILLed, `b` or `c` takes over (epoch 2). Its fence lands on relays 1 and 2 only.
 * 3. The new primary works and is SIGKILLed while relay 0 is still down, so its backlog never
 *    reaches relay 0: relay 0 misses fence 2 and every epoch-2 frame.
 * 4. Relay 0 comes back (same port, same store dir); the remaining standby takes over (epoch 3,
 *    its fence on all three). Then brand-new nodes with empty stores start, replay from the
 *    first message (relay 0 delivers fence 3 long before relays 1 and 2 deliver fence 2) and
 *    take over in turn.
 * 5. Every takeover resumes at or after the highest checkpoint acknowledged before it, from the
 *    epoch that acknowledged it, with the image and the store of that checkpoint; every standby
 *    catches up with what the primary acknowledged (none stalls behind a fence), and every
 *    takeover completes within a few lease TTLs of the SIGKILL.
 *
 * Events only (the sample app's JSON lines), no sleeps; the order of steps is fixed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { AppProcess, type AppEvent } from '../../src/drill/app-process.js';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

const TTL = 1500;
/** Pause of the sample app after each acknowledged step. */
const STEP_MS = 3;
/** SIGKILL of a primary to its successor's `primary` event. */
const TAKEOVER_BOUND_MS = 5 * TTL + 3_000;
/** A standby reaching what the primary acknowledged. */
const CATCH_UP_BOUND_MS = 15_000;

let nc: NatsConnection;
const relays: TestRelay[] = [];
const nodes = new Map<string, Node>();
const app = freshApp('relay-history');

beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  await Promise.all([...nodes.values()].map((n) => n.proc.kill()));
  await Promise.all(relays.map((r) => r.destroy()));
  await deleteApp(nc, app);
  await nc?.close();
});

/** One sample-app process and what it printed. */
interface Node {
  id: string;
  proc: AppProcess;
  /** Resolves once its stdout is fully read (after it exited). */
  closed: Promise<void>;
  primary?: AppEvent;
  /** It printed `standby` (it reads the relays). */
  standing: boolean;
  /** Acknowledged checkpoints as primary. */
  acked: { checkpoint: number; epoch: number; digest: string }[];
  /** State digest declared at each step (`cp-begin`), as primary. */
  digestAtStep: Map<number, string>;
  /** Last checkpoint applied as a standby (`applied`). */
  applied: { checkpoint: number; epoch: number };
  /** Refusals of a fence as seen before (`frame rejected`, reason duplicate). */
  fenceDuplicates: string[];
  /** Warnings and errors it logged, frame refusals aside. */
  warnings: string[];
  /** Frame refusals by reason (the sample app's running count). */
  rejected: Record<string, number>;
}

type Listener = (node: Node, e: AppEvent) => void;
const listeners = new Set<Listener>();

/** Starts a node of the sample app on the three relays, with an empty memory store. */
function start(id: string): Node {
  const proc = new AppProcess(id);
  proc.start([
    '--app',
    app,
    '--store',
    'memory',
    '--nats',
    NATS_URL,
    '--ttl',
    String(TTL),
    '--relays',
    relays.map((r) => r.urls.join('|')).join(','),
    '--ack',
    'quorum',
    // Paced: a few hundred checkpoints a second at most, so the replays stay short.
    '--step-ms',
    String(STEP_MS),
  ]);
  const node: Node = {
    id,
    proc,
    closed: new Promise((r) => proc.child!.once('close', () => r())),
    acked: [],
    digestAtStep: new Map(),
    applied: { checkpoint: 0, epoch: 0 },
    standing: false,
    fenceDuplicates: [],
    warnings: [],
    rejected: {},
  };
  proc.on((e) => {
    if (e.ev === 'primary') node.primary = e;
    else if (e.ev === 'standby') node.standing = true;
    else if (e.ev === 'acked') {
      node.acked.push({ checkpoint: Number(e.checkpoint), epoch: Number(e.epoch), digest: String(e.digest) });
    } else if (e.ev === 'cp-begin') node.digestAtStep.set(Number(e.steps), String(e.digest));
    else if (e.ev === 'applied') node.applied = { checkpoint: Number(e.checkpoint), epoch: Number(e.epoch) };
    else if (e.ev === 'log') {
      const line = `${String(e.msg)}: ${String(e.error ?? e.reason ?? '')}`;
      if (e.msg === 'frame rejected') {
        node.rejected = { ...(e.rejected as Record<string, number>) };
        if (/fence of epoch \d+ seen before/.test(String(e.error))) node.fenceDuplicates.push(line);
      } else if (node.warnings.length < 20) node.warnings.push(line);
    }
    for (const l of [...listeners]) l(node, e);
  });
  nodes.set(id, node);
  return node;
}

/** Resolves with the first event of any node that matches; rejects after `ms`. */
function until(pred: (n: Node, e: AppEvent) => boolean, what: string, ms: number): Promise<[Node, AppEvent]> {
  return new Promise((resolve, reject) => {
    const l: Listener = (n, e) => {
      if (e.ev === 'fatal') {
        listeners.delete(l);
        clearTimeout(timer);
        reject(new Error(`node ${n.id} failed while waiting for ${what}: ${String(e.error)}`));
      } else if (pred(n, e)) {
        listeners.delete(l);
        clearTimeout(timer);
        resolve([n, e]);
      }
    };
    listeners.add(l);
    const timer = setTimeout(() => {
      listeners.delete(l);
      reject(new Error(`no ${what} within ${ms} ms\n${diagnosis()}`));
    }, ms);
  });
}

/** Resolves once `cond(n)` holds (now, or after one of `n`'s events); rejects after `ms`. */
async function when(n: Node, cond: (n: Node) => boolean, what: string, ms: number): Promise<void> {
  if (cond(n)) return;
  await until((m) => m === n && cond(n), what, ms);
}

/** What every node did, for failure messages. */
function diagnosis(): string {
  return [...nodes.values()]
    .map((n) => {
      const last = n.acked.at(-1);
      return [
        `node ${n.id}: ${n.primary ? `primary epoch ${String(n.primary.epoch)} resumed ${String(n.primary.resumedEpoch)}/${String(n.primary.resumed)}` : 'standby'}`,
        `  acked up to ${last ? `${last.epoch}/${last.checkpoint}` : '-'}; applied ${n.applied.epoch}/${n.applied.checkpoint}`,
        `  frames rejected: ${JSON.stringify(n.rejected)}`,
        ...n.fenceDuplicates.slice(0, 5).map((w) => `  ${w}`),
        ...n.warnings.slice(0, 10).map((w) => `  ${w}`),
        n.proc.stderr ? `  stderr: ${n.proc.stderr.trim().slice(-600)}` : '',
      ].join('\n');
    })
    .join('\n');
}

function lastAcked(n: Node): number {
  return n.acked.at(-1)?.checkpoint ?? 0;
}

/** Waits until primary `p` acknowledged `count` more checkpoints than it had (or resumed from). */
async function work(p: Node, count: number): Promise<void> {
  const target = Math.max(lastAcked(p), Number(p.primary!.resumed)) + count;
  await when(p, () => lastAcked(p) >= target, `${p.id} acknowledging checkpoint ${target}`, 30_000);
}

/** Waits until every standby in `standbys` applied what `p` has acknowledged by now. */
async function standbysCaughtUp(p: Node, standbys: Node[]): Promise<void> {
  const target = lastAcked(p);
  for (const s of standbys) {
    await when(
      s,
      () => s.applied.checkpoint >= target,
      `standby ${s.id} applying checkpoint ${target} (acknowledged by ${p.id})`,
      CATCH_UP_BOUND_MS,
    ).catch((err: Error) => {
      // Not fatal here: the takeover that follows shows what the stall costs.
      expect.soft(s.applied.checkpoint, `${s.id} stalled; ${err.message}`).toBeGreaterThanOrEqual(target);
    });
  }
}

/** What relay `r`'s stream holds: the epochs of its fences, and messages per epoch (from the dedupe ids). */
/**
 * What relay `r` holds: its fences in stream order and its messages per epoch; with
 * `beforeFence`, only what precedes that epoch's fence (what a replaying node reads first).
 */
async function relayHolds(
  r: TestRelay,
  beforeFence?: number,
): Promise<{ fences: number[]; perEpoch: Record<number, number> }> {
  const c = await connect({ servers: r.urls });
  try {
    const stream = `RP_${app}`;
    const last = (await (await jetstreamManager(c)).streams.info(stream)).state.last_seq;
    const fences: number[] = [];
    const perEpoch: Record<number, number> = {};
    if (last === 0) return { fences, perEpoch };
    const messages = await (await jetstream(c).consumers.get(stream)).consume();
    for await (const m of messages) {
      // `<app>.<epoch>.<seq>.<part>` (protocol/subjects.ts messageId); seq 1 of an epoch is its fence.
      const [, epoch, seq] = (m.headers?.get('Nats-Msg-Id') ?? '').split('.').map(Number);
      if (beforeFence !== undefined && epoch === beforeFence && seq === 1) break;
      perEpoch[epoch!] = (perEpoch[epoch!] ?? 0) + 1;
      if (seq === 1) fences.push(epoch!);
      if (m.seq >= last) break;
    }
    await messages.close();
    return { fences, perEpoch };
  } finally {
    await c.close();
  }
}

/** Polls relay `r` until its stream holds the fence of `epoch` (the primary's backlog reached it). */
async function fenceReaches(r: TestRelay, epoch: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if ((await relayHolds(r)).fences.includes(epoch)) return;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`the fence of epoch ${epoch} never reached relay ${r.urls[0]}`);
}

/** The takeover history: the nodes that were primary, in order. */
const primaries: Node[] = [];

/**
 * SIGKILLs primary `p` and waits for one of `candidates` to take over within the bound; checks
 * that it resumed every acknowledged checkpoint, with the image and the store of that checkpoint.
 */
async function killAndTakeOver(p: Node, candidates: Node[], afterKill?: () => Promise<void>): Promise<Node> {
  const next = until(
    (n, e) => candidates.includes(n) && e.ev === 'primary',
    `takeover after ${p.id} was SIGKILLed (by ${candidates.map((c) => c.id).join(' or ')})`,
    TAKEOVER_BOUND_MS,
  );
  next.catch(() => undefined); // awaited below; a failing `afterKill` must not leave it unhandled
  const killedAt = Date.now();
  await p.proc.kill();
  await afterKill?.();
  const [n, e] = await next;
  const tookMs = Date.now() - killedAt;
  await p.closed; // every line it printed (acks included) is read
  expect(tookMs).toBeLessThanOrEqual(TAKEOVER_BOUND_MS);
  primaries.push(n);
  if (process.env.RESTARTPOINT_TEST_VERBOSE) {
    console.log(
      `${p.id} (epoch ${String(p.primary!.epoch)}) acked up to ${lastAcked(p)}, SIGKILLed; ${n.id} took over in ${tookMs} ms: epoch ${String(e.epoch)}, resumed ${String(e.resumedEpoch)}/${String(e.resumed)}`,
    );
  }

  const resumed = Number(e.resumed);
  const resumedEpoch = Number(e.resumedEpoch);
  // Every acknowledged checkpoint so far: the highest one, and which primary acknowledged it.
  const acks = primaries.slice(0, -1).flatMap((q) => q.acked.map((a) => ({ ...a, by: q.id })));
  const top = acks.reduce((m, a) => (a.checkpoint > m.checkpoint ? a : m), acks[0]!);
  const prevEpoch = Number(p.primary!.epoch);
  expect
    .soft(
      resumed,
      `${n.id} resumed from ${resumedEpoch}/${resumed}, but ${top.by} acknowledged checkpoint ${top.epoch}/${top.checkpoint}: ${top.checkpoint - resumed} acknowledged checkpoint(s) lost\n${diagnosis()}`,
    )
    .toBeGreaterThanOrEqual(top.checkpoint);
  expect.soft(resumedEpoch, `${n.id} resumed from epoch ${resumedEpoch}, not ${prevEpoch}`).toBe(prevEpoch);
  // The image is the one declared at that restart point, and the store holds its writes.
  const from = primaries.find((q) => Number(q.primary!.epoch) === resumedEpoch);
  expect.soft(from, `no primary of epoch ${resumedEpoch} was seen`).toBeDefined();
  if (from) {
    const declared = from.digestAtStep.get(Number(e.resumedSteps));
    expect.soft(e.digest, `${n.id}'s image is not the one of step ${String(e.resumedSteps)}`).toBe(declared);
    const ack = from.acked.find((a) => a.checkpoint === resumed);
    if (ack) expect.soft(e.digest).toBe(ack.digest);
  }
  expect.soft(e.storeDigest, `${n.id}'s store does not match its image`).toBe(e.mirrorDigest);
  return n;
}

describe('relay history (issue 11, seen from outside: 3 relays, quorum, one relay down across a takeover)', () => {
  it('loses no acknowledged checkpoint and no standby stalls when a relay missed a fence and its epoch', async () => {
    for (let i = 0; i < 3; i++) relays.push(await TestRelay.single());
    const [r0] = relays;

    // 1. A primary that checkpoints with writes, two standbys. The primary holds after a few
    //    checkpoints (the sample app's kill point) while the standbys start.
    const a = start('a');
    a.proc.send({ cmd: 'arm', point: 'after-checkpoint', afterSteps: 4 });
    await when(a, () => a.primary !== undefined, 'a primary', 30_000);
    primaries.push(a);
    const held = until((n, e) => n === a && e.ev === 'at-killpoint', 'a holding', 30_000);
    const b = start('b');
    const c = start('c');
    await when(b, () => b.standing, 'b standby', 30_000);
    await when(c, () => c.standing, 'c standby', 30_000);
    await held;

    // 2. Relay 0 goes down (store dir kept) and stays down across a takeover. The primary works
    //    on: relays 1 and 2 get hundreds of checkpoints relay 0 never sees.
    await r0!.servers[0]!.kill();
    a.proc.send({ cmd: 'release' });
    await work(a, 300);
    await standbysCaughtUp(a, [b, c]);
    const p2 = await killAndTakeOver(a, [b, c]);
    const s3 = p2 === b ? c : b;

    // 3. The new primary works, and dies with relay 0 still down: its backlog never reaches it.
    await work(p2, 50);
    await standbysCaughtUp(p2, [s3]);
    // 4. Relay 0 comes back (same port, same store dir) right after that SIGKILL, and the last
    //    live standby takes over: its fence (epoch 3) reaches all three relays.
    const p3 = await killAndTakeOver(p2, [s3], () => r0!.servers[0]!.start());
    await work(p3, 20);
    // The schedule did what it means to: before fence 3, relay 0 holds no fence 2 and next to
    // nothing of epochs 1 and 2; the others hold both fences. (The epoch-3 primary then
    // backfills relay 0 with fence 2 and epoch 2, after fence 3 in its stream: a node replaying
    // relay 0 still meets fence 3 first.)
    const [e1, e2, e3] = [a, p2, p3].map((n) => Number(n.primary!.epoch)) as [number, number, number];
    await fenceReaches(r0!, e3);
    const holds = await Promise.all(relays.map((r, i) => relayHolds(r, i === 0 ? e3 : undefined)));
    expect((await relayHolds(r0!)).fences).toContain(e3);
    expect(holds[0]!.fences).not.toContain(e2);
    for (const h of holds.slice(1)) {
      expect(h.fences).toEqual(expect.arrayContaining([e2, e3]));
      // Of epoch 2, relay 0 holds at most what the epoch-3 primary re-published before its fence
      // (a checkpoint it kept without seeing it durable): a few messages of hundreds.
      expect((holds[0]!.perEpoch[e2] ?? 0) * 10).toBeLessThan(h.perEpoch[e2]!);
      // Far fewer messages before fence 3 on relay 0 than before fence 2 on the others.
      expect(holds[0]!.perEpoch[e1]! * 10).toBeLessThan(h.perEpoch[e1]!);
    }
    if (process.env.RESTARTPOINT_TEST_VERBOSE) console.log('relays hold (epoch: messages):', holds);

    // Brand-new nodes (empty stores) replay from the start and take over in turn. Relay 0
    // delivers fence 3 after about 15 messages, relays 1 and 2 deliver fence 2 only after the
    // 300 checkpoints more that relay 0 missed: the fences arrive out of epoch order.
    let primary = p3;
    for (const id of ['d', 'e']) {
      const fresh = start(id);
      await when(fresh, () => fresh.standing, `${id} standby`, 30_000);
      await work(primary, 20);
      await standbysCaughtUp(primary, [fresh]);
      primary = await killAndTakeOver(primary, [fresh]);
      expect(primary).toBe(fresh);
      await work(primary, 5);
    }

    if (process.env.RESTARTPOINT_TEST_VERBOSE) console.log(diagnosis());
    // Every fence refused as seen before was harmless: the node went on applying that epoch.
    for (const n of nodes.values()) {
      for (const d of n.fenceDuplicates) {
        const epoch = Number(/fence of epoch (\d+)/.exec(d)![1]);
        const reached = n.primary ? Number(n.primary.resumedEpoch) : n.applied.epoch;
        expect
          .soft(reached, `${n.id} logged '${d}' and never applied that epoch`)
          .toBeGreaterThanOrEqual(epoch);
      }
    }
  }, 120_000);
});
