export {
  FrameKind,
  PROTOCOL_VERSION,
  HEADER_BYTES,
  MAX_PARTS,
  encodeFrame,
  decodePart,
  partOverhead,
  PartAssembler,
} from './frame.js';
export type { Frame, FrameHeader, FramePart } from './frame.js';
export {
  ImageFormat,
  ImageCodec,
  IMAGE_HEADER_BYTES,
  encodedOpSize,
  encodeWrites,
  decodeWrites,
  encodeImage,
  decodeImage,
  encodeSeal,
  decodeSeal,
  encodeFence,
  decodeFence,
} from './records.js';
export type { ImageRecord, SealRecord, FenceRecord } from './records.js';
export { APP_NAME_PATTERN, appNames, messageId } from './subjects.js';
export type { AppNames } from './subjects.js';
