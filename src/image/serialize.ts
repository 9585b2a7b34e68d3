/**
 * Whole execution images: the application state as node:v8 bytes (keyframes).
 *
 * ```text
 * state ──serializeImage──▶ Buffer (v8 wire format, self-versioned) ──deserializeImage──▶ state
 * ```
 */
import { Buffer } from 'node:buffer';
import v8 from 'node:v8';
import { ImageError, SerializationError } from '../errors.js';
import { findUnserializable } from './typed-tree.js';

/** The hooks @types/node leaves out: Node's serializers call them for ArrayBufferViews. */
interface HostObjectWriter {
  _writeHostObject(object: object): void;
}
interface HostObjectReader {
  _readHostObject(): ArrayBufferView;
}

const writeHostObject = (v8.DefaultSerializer.prototype as unknown as HostObjectWriter)._writeHostObject;
const readHostObject = (v8.DefaultDeserializer.prototype as unknown as HostObjectReader)._readHostObject;

/**
 * Node's serializer, noting the host object it refuses (a Blob, a native handle of some
 * addon), so that the error can name where that object sits in the state.
 */
class ImageSerializer extends v8.DefaultSerializer {
  hostObject: object | undefined;

  _writeHostObject(object: object): void {
    if (!ArrayBuffer.isView(object)) this.hostObject = object;
    writeHostObject.call(this, object);
  }
}

/**
 * Node's deserializer, except that every typed array, DataView and Buffer gets memory of its
 * own: Node's default makes them views into the input bytes, so a caller reusing its receive
 * buffer would silently change the restored state (and a small view would pin the whole image).
 */
class ImageDeserializer extends v8.DefaultDeserializer {
  _readHostObject(): ArrayBufferView {
    const view = readHostObject.call(this);
    if (Buffer.isBuffer(view)) return Buffer.from(view);
    if (view instanceof DataView) {
      return new DataView(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
    }
    return (view as unknown as { slice(): ArrayBufferView }).slice();
  }
}

/** First byte of every v8 wire format that has a header (all that Node 20+ writes). */
const V8_VERSION_TAG = 0xff;

/**
 * Serializes `state` with node:v8 (Node's DefaultSerializer: typed arrays and Buffers are copied,
 * never their whole backing store).
 *
 * Throws `SerializationError` when v8 refuses a value, with `path` naming the first offending
 * value (`state.handlers.onTick`) and a message saying how to fix it. When the walk cannot pin
 * the value down (v8 ran out of stack, say), the path is `state` and the message carries v8's.
 *
 * node:v8 (Node 20) writes, but cannot read back, an Error reached again from inside its own
 * `cause`; this function does not walk the state to look for that, `toTree` does and refuses it.
 */
export function serializeImage(state: unknown): Buffer {
  const serializer = new ImageSerializer();
  try {
    serializer.writeHeader();
    serializer.writeValue(state);
    return serializer.releaseBuffer();
  } catch (cause) {
    throw explain(state, serializer.hostObject, cause);
  }
}

function explain(state: unknown, hostObject: object | undefined, cause: unknown): SerializationError {
  const found = findUnserializable(state, hostObject);
  if (found !== undefined) return found;
  const v8Message = cause instanceof Error ? cause.message : String(cause);
  if (cause instanceof RangeError && /call stack/i.test(v8Message)) {
    return new SerializationError(
      'state',
      'state nests too deeply for node:v8 (it recurses once per level and ran out of stack, ' +
        'typically past about 3000 levels): flatten long chains, for example keep linked-list ' +
        'nodes in an array and link them by index',
      { cause },
    );
  }
  return new SerializationError('state', `state could not be serialized by node:v8: ${v8Message}`, {
    cause,
  });
}

/**
 * Decodes an image made by `serializeImage`. Views in the result own their memory: `bytes` may be
 * reused afterwards.
 *
 * Throws `ImageError` for anything that is not a complete image (empty, truncated, corrupt, not v8
 * bytes, written by a newer v8 than this one reads); never another error type. A checksum in the
 * frame layer is what proves bytes are the ones sent: random bytes may still decode to some value.
 */
export function deserializeImage(bytes: Uint8Array): unknown {
  if (!(bytes instanceof Uint8Array)) {
    throw new ImageError(`an execution image must be a Uint8Array, got ${describeType(bytes)}`);
  }
  if (bytes.byteLength === 0) throw new ImageError('execution image is empty (0 bytes)');
  // Without its header byte v8 falls back to the legacy header-less format and reads almost
  // anything; images are never written that way.
  if (bytes[0] !== V8_VERSION_TAG) {
    throw new ImageError(
      `execution image does not start with the v8 version tag 0xff (got 0x${(bytes[0] ?? 0).toString(16).padStart(2, '0')}): ` +
        'it is not an image, or it is corrupt',
    );
  }
  try {
    const deserializer = new ImageDeserializer(bytes);
    deserializer.readHeader();
    return deserializer.readValue();
  } catch (cause) {
    const message = cause instanceof Error ? cause.message : String(cause);
    throw new ImageError(
      `execution image of ${bytes.byteLength} bytes could not be decoded (${message}): it is truncated, ` +
        'corrupt, or written by a newer Node.js',
      { cause },
    );
  }
}

function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  return Object.prototype.toString.call(value).slice(8, -1);
}
