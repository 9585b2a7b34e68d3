/**
 * A standby's message path without the transport: `Intake` (codec → witnesses → decoder →
 * applier) over the given store, fed with relay messages as the runner feeds it in production.
 */
import { FrameCodec } from '../../src/protocol/codec.js';
import { encodeFrame, type Frame } from '../../src/protocol/frame.js';
import { ImageChain } from '../../src/image/chain.js';
import { Intake, type IntakeOptions } from '../../src/standby/intake.js';

export interface TestIntake {
  readonly intake: Intake;
  readonly applier: Intake['applier'];
  /** Delivers one message as read from `relay` (default 0) at the next stream sequence. */
  take(bytes: Uint8Array, relay?: number): Promise<void>;
  /** Encodes frames into parts of at most `partBytes` and delivers them in order from relay 0. */
  feed(...frames: Frame[]): Promise<void>;
}

/** An intake over `o.adapter` with an unsigned, non-FEC codec of `o.relays` (default 1) relays. */
export function testIntake(
  o: Omit<IntakeOptions, 'codec' | 'relays' | 'images'> & {
    relays?: number;
    images?: IntakeOptions['images'];
    partBytes?: number;
  },
): TestIntake {
  const relays = o.relays ?? 1;
  const codec = new FrameCodec({ app: o.app, relays, maxPayload: 1 << 20 });
  const intake = new Intake({ ...o, codec, relays, images: o.images ?? new ImageChain() });
  let streamSeq = 0;
  const take = (bytes: Uint8Array, relay = 0): Promise<void> => intake.take(relay, ++streamSeq, bytes);
  return {
    intake,
    applier: intake.applier,
    take,
    feed: async (...frames) => {
      for (const f of frames)
        for (const part of encodeFrame(o.app, f, o.partBytes ?? 1 << 20)) await take(part);
    },
  };
}
