/** Image records for tests that build frames and bases by hand. */
import { ImageCodec, ImageFormat, type ImageRecord } from '../../src/protocol/records.js';

/** A whole (keyframe) image of `raw` serialized bytes, stored as they are (codec None). */
export function rawFullImage(raw: Uint8Array): ImageRecord {
  return {
    format: ImageFormat.Full,
    codec: ImageCodec.None,
    base: 0,
    stateVersion: 1,
    rawLength: raw.byteLength,
    payload: raw,
  };
}
