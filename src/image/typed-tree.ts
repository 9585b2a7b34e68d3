/**
 * The typed tree: a JSON mirror of any value `node:v8` can serialize, so that images can be
 * diffed with jsondiffpatch and shipped as JSON deltas.
 *
 * ```text
 * state ──toTree──▶ TreeNode (plain JSON) ──diffTrees/patchTree──▶ TreeNode ──fromTree──▶ state
 * ```
 *
 * Encoding (this is wire format: deltas carry it, so change it only with a protocol version bump):
 *
 * - `null`, booleans, strings and finite numbers other than `-0` are themselves.
 * - Arrays without holes are arrays of nodes. Plain objects (and class instances, which v8 also
 *   flattens to plain objects) are objects of nodes under the same keys, in the same order.
 * - Every other value is a tagged object whose `"$rp"` member names its kind:
 *
 * | value | node |
 * | --- | --- |
 * | `undefined` | `{"$rp":"u"}` |
 * | `NaN`, `Infinity`, `-Infinity`, `-0` | `{"$rp":"num","v":"NaN"}` (`"Infinity"`, `"-Infinity"`, `"-0"`) |
 * | BigInt | `{"$rp":"big","v":"-123"}` (decimal) |
 * | Date | `{"$rp":"date","v":1700000000000}` (`null` for an invalid date) |
 * | RegExp | `{"$rp":"re","s":"a+b","f":"gi"}` (source, flags; `lastIndex` is dropped, as v8 does) |
 * | Map | `{"$rp":"map","e":[[key, value], ...]}` |
 * | Set | `{"$rp":"set","e":[value, ...]}` |
 * | ArrayBuffer | `{"$rp":"ab","b":"<base64>"}`, plus `"max"` (maxByteLength) when resizable |
 * | typed array, DataView, Buffer | `{"$rp":"view","t":"Float64Array","b":"<base64 of the viewed bytes>"}` |
 * | Error | `{"$rp":"err","n":"TypeError","m":"message","s":"stack","c":cause}` (`m`, `s`, `c` optional) |
 * | boxed primitive | `{"$rp":"box","v":node of the primitive}` |
 * | array with holes | `{"$rp":"sparse","l":length,"e":[[index, value], ...]}` |
 *
 * - Shared references and cycles: an object reached a second time becomes `{"$rp":"ref","id":n}`;
 *   its first occurrence carries the id: a tagged node gets an `"id": n` member, a plain object
 *   gets `"$rp": n` (a number, so it stays a plain object), and an array gets a first element
 *   `{"$rp":"aid","id":n}`. Ids are unique within one tree and assigned in walk order, except
 *   that a plain object with a string or number `id` (or `_id`) member uses it: `"#s:abc"` or
 *   `"#n:12"` (a `"$rp"` string starting with `#` is such an id, never a tag). That keeps ids
 *   stable when records are inserted or removed, so deltas stay small.
 * - Keys of plain objects are escaped so that no plain object ever has an own `"$rp"`, `"_t"`
 *   (jsondiffpatch's array-delta marker), `"__proto__"` or `Object.prototype` member name
 *   (jsondiffpatch reads `left[name]` through the prototype chain): such keys, and every key
 *   that starts with `~`, are stored with one more leading `~`.
 *
 * Views are copied, as node:v8 copies them: a typed array and the ArrayBuffer it views come back
 * as separate buffers. A Buffer comes back as a Buffer, every other view as its own class. Extra
 * properties on arrays, typed arrays and boxed primitives are not carried (v8 keeps those of
 * arrays). Objects are walked as v8 walks them: own enumerable string keys, getters invoked.
 */
import { Buffer, Blob } from 'node:buffer';
import { KeyObject } from 'node:crypto';
import { BlockList, SocketAddress } from 'node:net';
import { createHistogram } from 'node:perf_hooks';
import { types } from 'node:util';
import { MessagePort } from 'node:worker_threads';
import { ImageError, LimitError, SerializationError } from '../errors.js';

/** A node of the typed tree: plain JSON only (no `undefined`, no non-finite numbers). */
export type TreeNode = null | boolean | number | string | TreeNode[] | TreeObject;

/** An object node of the typed tree. */
export interface TreeObject {
  [key: string]: TreeNode;
}

/** The member that marks a tagged node (a non-JSON value, a shared reference). */
export const TREE_TAG = '$rp';

/** The kinds a tagged node's `"$rp"` member can name. */
export const TreeTag = {
  Undefined: 'u',
  Number: 'num',
  BigInt: 'big',
  Date: 'date',
  RegExp: 're',
  Map: 'map',
  Set: 'set',
  ArrayBuffer: 'ab',
  View: 'view',
  Error: 'err',
  Boxed: 'box',
  Sparse: 'sparse',
  Ref: 'ref',
  ArrayId: 'aid',
} as const;
export type TreeTag = (typeof TreeTag)[keyof typeof TreeTag];

/** Name the root of a state gets in error paths (`state.items[3]`). */
const ROOT = 'state';

const ESCAPE_CHAR = 0x7e; // '~'
const RESERVED_KEYS: ReadonlySet<string> = new Set([
  TREE_TAG,
  '_t',
  '__proto__',
  'constructor',
  'hasOwnProperty',
  'isPrototypeOf',
  'propertyIsEnumerable',
  'toLocaleString',
  'toString',
  'valueOf',
  '__defineGetter__',
  '__defineSetter__',
  '__lookupGetter__',
  '__lookupSetter__',
  // A later Node may add members to Object.prototype; escaping them too is harmless because
  // unescaping does not depend on this list.
  ...Object.getOwnPropertyNames(Object.prototype),
]);

function escapeKey(key: string): string {
  return key.charCodeAt(0) === ESCAPE_CHAR || RESERVED_KEYS.has(key) ? `~${key}` : key;
}

function unescapeKey(key: string): string {
  return key.charCodeAt(0) === ESCAPE_CHAR ? key.slice(1) : key;
}

const objectToString = Object.prototype.toString;
const hasOwn = Object.hasOwn;
const dateGetTime = Date.prototype.getTime;
const regExpSource = getter(RegExp.prototype, 'source');
const regExpFlags = getter(RegExp.prototype, 'flags');
// %TypedArray%.prototype[@@toStringTag] reads the internal name: a subclass or a spoofed tag
// cannot fool it.
const typedArrayName = getter(Object.getPrototypeOf(Uint8Array.prototype) as object, Symbol.toStringTag);

function getter(proto: object, key: PropertyKey): (this: unknown) => unknown {
  const get = Object.getOwnPropertyDescriptor(proto, key)?.get;
  if (get === undefined) throw new Error(`missing intrinsic getter ${String(key)}`);
  return get;
}

type ViewCtor = { new (buffer: ArrayBuffer): ArrayBufferView; BYTES_PER_ELEMENT?: number };

/** The views node:v8 (Node's DefaultSerializer) knows how to write, by the name stored in `t`. */
const VIEW_CTORS: ReadonlyMap<string, ViewCtor> = new Map<string, ViewCtor>([
  ['Int8Array', Int8Array],
  ['Uint8Array', Uint8Array],
  ['Uint8ClampedArray', Uint8ClampedArray],
  ['Int16Array', Int16Array],
  ['Uint16Array', Uint16Array],
  ['Int32Array', Int32Array],
  ['Uint32Array', Uint32Array],
  ['Float32Array', Float32Array],
  ['Float64Array', Float64Array],
  ['BigInt64Array', BigInt64Array],
  ['BigUint64Array', BigUint64Array],
  ['DataView', DataView],
]);

/** Error classes v8 keeps (by `name`); any other error comes back as a plain `Error`. */
const ERROR_CTORS: ReadonlyMap<string, ErrorConstructor> = new Map<string, ErrorConstructor>([
  ['Error', Error],
  ['EvalError', EvalError],
  ['RangeError', RangeError],
  ['ReferenceError', ReferenceError],
  ['SyntaxError', SyntaxError],
  ['TypeError', TypeError],
  ['URIError', URIError],
]);

/** Built-in iterators v8 refuses; they have no `util.types` check of their own. */
const ITERATOR_PROTOS: ReadonlySet<unknown> = new Set([
  Object.getPrototypeOf([][Symbol.iterator]()),
  Object.getPrototypeOf(''[Symbol.iterator]()),
  Object.getPrototypeOf('a'.matchAll(/a/g)),
]);

type AnyClass = abstract new (...args: never[]) => unknown;

/** Node classes whose instances are native handles: v8 reports "Unserializable host object". */
const HOST_CLASSES: readonly AnyClass[] = [
  Blob,
  MessagePort,
  KeyObject as unknown as AnyClass,
  SocketAddress,
  BlockList,
  (Object.getPrototypeOf(Object.getPrototypeOf(createHistogram())) as { constructor: new () => unknown })
    .constructor,
];

/** The classes a namespace object (Intl, WebAssembly) holds; their members are not enumerable. */
function classesOf(namespace: object | undefined): readonly [string, AnyClass][] {
  if (namespace === undefined) return [];
  const found: [string, AnyClass][] = [];
  for (const name of Object.getOwnPropertyNames(namespace)) {
    const member: unknown = (namespace as Record<string, unknown>)[name];
    if (typeof member === 'function' && /^[A-Z]/.test(name) && !name.endsWith('Error')) {
      found.push([name, member as AnyClass]);
    }
  }
  return found;
}

const INTL_CLASSES = classesOf(Intl);
const WASM_CLASSES = classesOf((globalThis as { WebAssembly?: object }).WebAssembly);

/**
 * Thrown inside the walks; the walk adds the path from its frame stack and the entry point
 * turns it into a SerializationError or ImageError.
 */
class PathFault extends Error {
  constructor(
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(reason, options);
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/** Paths of deep values can be huge; messages show both ends, `error.path` keeps all of it. */
function shortPath(path: string): string {
  return path.length <= 240 ? path : `${path.slice(0, 120)}…${path.slice(-100)}`;
}

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

function propSegment(key: string): string {
  return IDENTIFIER.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
}

function describeKey(key: unknown): string | undefined {
  switch (typeof key) {
    case 'string':
      return JSON.stringify(key);
    case 'number':
      return Object.is(key, -0) ? '-0' : String(key);
    case 'bigint':
      return `${key}n`;
    case 'boolean':
    case 'undefined':
      return String(key);
    default:
      return key === null ? 'null' : undefined;
  }
}

function mapValueSegment(key: unknown, entry: number): string {
  const described = describeKey(key);
  return described === undefined ? `<Map entry ${entry} value>` : `<Map key ${described}>`;
}

/** Turns whatever a walk threw into a fault: ours as is, anything else (a getter) described. */
function toFault(e: unknown, describe: (e: unknown) => string): PathFault {
  return e instanceof PathFault ? e : new PathFault(describe(e), { cause: e });
}

function describeThrownWhileReading(e: unknown): string {
  return (
    `threw while being read (${errorText(e)}): make it a plain data property, ` +
    'or keep it out of the state'
  );
}

function describeMalformed(e: unknown): string {
  return `is malformed (${errorText(e)})`;
}

function className(o: object): string {
  try {
    const ctor = (o as { constructor?: { name?: unknown } }).constructor;
    if (typeof ctor?.name === 'string' && ctor.name !== '') return ctor.name;
  } catch {
    // An exotic constructor getter: fall back to the tag.
  }
  return objectToString.call(o).slice(8, -1);
}

/** Why v8 refuses `o` (an object that is not one of the kinds v8 writes), or undefined. */
function refusal(o: object): string | undefined {
  if (types.isPromise(o)) {
    return (
      'is a Promise; promises cannot be part of a checkpoint image: await it before ' +
      'checkpoint() and keep its result in the state instead'
    );
  }
  if (types.isWeakMap(o) || types.isWeakSet(o) || o instanceof WeakRef || o instanceof FinalizationRegistry) {
    return (
      `is a ${className(o)}; weak references cannot be part of a checkpoint image: use a Map or ` +
      'Set keyed by id, or rebuild it on resume'
    );
  }
  if (types.isSharedArrayBuffer(o)) {
    return (
      'is a SharedArrayBuffer; shared memory cannot be part of a checkpoint image: copy it, ' +
      'for example new Uint8Array(sab).slice()'
    );
  }
  if (types.isGeneratorObject(o)) {
    return (
      'is a generator object; generators cannot be part of a checkpoint image: keep the ' +
      'values, or the position it reached, and recreate the generator on resume'
    );
  }
  if (types.isMapIterator(o) || types.isSetIterator(o) || ITERATOR_PROTOS.has(Object.getPrototypeOf(o))) {
    return (
      'is an iterator; iterators cannot be part of a checkpoint image: collect it with ' +
      'Array.from() first'
    );
  }
  if (types.isArgumentsObject(o)) {
    return (
      'is an arguments object; it cannot be part of a checkpoint image: copy it with ' +
      'Array.from(arguments)'
    );
  }
  if (types.isModuleNamespaceObject(o)) {
    return (
      'is a module namespace object; modules cannot be part of a checkpoint image: keep only ' +
      'the data you need from it'
    );
  }
  if (types.isSymbolObject(o)) {
    return (
      'is a boxed symbol; symbols cannot be part of a checkpoint image: store a string name ' +
      'instead and map it back to the symbol on resume'
    );
  }
  if (types.isExternal(o)) {
    return 'is a native External value; it cannot be part of a checkpoint image: keep it out of the state';
  }
  for (const [name, cls] of INTL_CLASSES) {
    if (o instanceof cls) {
      return (
        `is an Intl.${name}; Intl objects cannot be part of a checkpoint image: keep its locale ` +
        'and options in the state and recreate it on resume'
      );
    }
  }
  for (const [name, cls] of WASM_CLASSES) {
    if (o instanceof cls) {
      return (
        `is a WebAssembly.${name}; WebAssembly objects cannot be part of a checkpoint image: ` +
        'recreate it on resume'
      );
    }
  }
  return hostRefusal(o);
}

function hostRefusal(o: object): string | undefined {
  for (const cls of HOST_CLASSES) {
    if (o instanceof cls) return describeHostObject(o);
  }
  return undefined;
}

function describeHostObject(o: object): string {
  return (
    `is a ${className(o)}, a native handle that node:v8 cannot serialize; keep it out of the ` +
    'state and recreate it on resume'
  );
}

function specialNumber(n: number): TreeObject {
  const v = Number.isNaN(n) ? 'NaN' : n === 0 ? '-0' : n > 0 ? 'Infinity' : '-Infinity';
  return { [TREE_TAG]: TreeTag.Number, v };
}

function base64Of(buffer: ArrayBufferLike, byteOffset: number, byteLength: number): string {
  return Buffer.from(buffer, byteOffset, byteLength).toString('base64');
}

/** What a frame of a walk is filling. */
const Fill = {
  Plain: 0,
  Array: 1,
  Sparse: 2,
  Map: 3,
  Set: 4,
  Cause: 5,
} as const;
type Fill = (typeof Fill)[keyof typeof Fill];

/**
 * One container being filled by a walk. The walks are iterative (a stack of these, reused),
 * so that nesting is limited by memory rather than by the call stack: node:v8 itself stops
 * near 3000 levels, and a recursive walk would stop earlier still.
 */
class Frame {
  fill: Fill = Fill.Plain;
  /** The container read from. */
  src: unknown = undefined;
  /** The container written to (for a Map being decoded: the Map). */
  out: unknown = undefined;
  /** Own keys (plain objects, sparse arrays), or undefined. */
  keys: string[] | undefined = undefined;
  /** Next child to visit; the child being visited is the one before. */
  next = 0;
  end = 0;
  /** Offset of the first item (1 when an array starts with its id marker). */
  start = 0;
  iterator: Iterator<unknown> | undefined = undefined;
  /** Map walks: whether the child being visited is the entry's key (else its value). */
  onKey = false;
  /** Map walks: the current entry's key (source value, or decoded key) and value (source). */
  key: unknown = undefined;
  value: unknown = undefined;
  /** Map walks: the current entry's [key, value] node (being written, or being read). */
  pair: TreeNode[] | undefined = undefined;
  /** Sliced walks: the object this frame encodes (`src` may be a copy of it, see `WalkViews`). */
  orig: object | undefined = undefined;
  /** Sliced walks of a large Map: told every key, in order (see `WalkViews.enterMap`). */
  sink: ((key: unknown) => void) | undefined = undefined;

  set(fill: Fill, src: unknown, out: unknown, keys: string[] | undefined, end: number, start: number): void {
    this.fill = fill;
    this.src = src;
    this.out = out;
    this.keys = keys;
    this.next = start;
    this.end = end;
    this.start = start;
    this.iterator = undefined;
    this.onKey = false;
    this.key = undefined;
    this.value = undefined;
    this.pair = undefined;
    this.orig = undefined;
    this.sink = undefined;
  }

  /** The path segment of the child being visited (`.name`, `[3]`, `<Map key "x">`). */
  segment(treeKeys: boolean): string {
    const at = this.next - 1;
    switch (this.fill) {
      case Fill.Plain: {
        const key = (this.keys as string[])[at] as string;
        return propSegment(treeKeys ? unescapeKey(key) : key);
      }
      case Fill.Array:
        return `[${at - this.start}]`;
      case Fill.Sparse: {
        if (this.keys !== undefined) return `[${this.keys[at] as string}]`;
        const entry = (this.src as TreeNode[])[at];
        return Array.isArray(entry) && typeof entry[0] === 'number'
          ? `[${entry[0]}]`
          : `<sparse entry ${at}>`;
      }
      case Fill.Map:
        return this.onKey ? `<Map entry ${at} key>` : mapValueSegment(this.key, at);
      case Fill.Set:
        return `<Set entry ${at}>`;
      default:
        return '.cause';
    }
  }
}

/** A reusable stack of frames. */
class FrameStack {
  private readonly frames: Frame[] = [];
  depth = 0;

  /** @param treeKeys whether plain-object keys are tree keys (escaped) rather than source keys. */
  constructor(private readonly treeKeys = false) {}

  push(fill: Fill, src: unknown, out: unknown, keys: string[] | undefined, end: number, start = 0): void {
    let frame = this.frames[this.depth];
    if (frame === undefined) {
      frame = new Frame();
      this.frames.push(frame);
    }
    frame.set(fill, src, out, keys, end, start);
    this.depth++;
  }

  top(): Frame {
    return this.frames[this.depth - 1] as Frame;
  }

  /** The open frame at `i` (0 = the root's). */
  at(i: number): Frame {
    return this.frames[i] as Frame;
  }

  /** The path from the root to the child being visited at the top. */
  path(): string {
    let path = ROOT;
    for (let i = 0; i < this.depth; i++) path += (this.frames[i] as Frame).segment(this.treeKeys);
    return path;
  }

  /** Lets go of the values held, so a walk that threw does not pin them. */
  clear(): void {
    for (const frame of this.frames) frame.set(Fill.Plain, undefined, undefined, undefined, 0, 0);
    this.depth = 0;
  }
}

/** One toTree walk: remembers every object it met so that shared ones get ids. */
class Encoder {
  private readonly seen = new Map<object, TreeNode>();
  /** Arrays met twice: their id markers go in front once the walk is over (see `run`). */
  private readonly arrayIds = new Map<TreeNode[], number>();
  private readonly keyedIds = new Set<string>();
  /** Errors whose cause is being walked (see `object`). */
  private readonly openErrors = new Set<TreeNode>();
  private readonly stack = new FrameStack();
  private nextId = 1;
  /** Children left before `step` yields (sliced walks; see `advance`). */
  private ticks = Infinity;
  private root: TreeNode = null;

  /**
   * @param hostObject an object node:v8 refused as a host object; reported where it is met.
   * @param maxDepth the most containers nested in one another (`limits.maxDepth`); one more is
   *   refused with a `DepthFault`.
   */
  constructor(
    private readonly hostObject?: object,
    private readonly maxDepth = Infinity,
    /** How many containers hold the value walked (incremental paths walk a part of the state). */
    private readonly above = 0,
    /** Sliced walks of a live state: what each container looked like when the walk began. */
    private readonly views?: WalkViews,
  ) {}

  /** Whether the walk gave some object an id: the value shares an object or has a cycle. */
  get shared(): boolean {
    return this.nextId > 1 || this.keyedIds.size > 0;
  }

  /** Every object the walk met (to its node). */
  objects(): ReadonlyMap<object, TreeNode> {
    return this.seen;
  }

  /** Encodes a whole value; a failure comes out as a WalkFault carrying the path. */
  run(value: unknown): TreeNode {
    this.begin(value);
    this.advance(Infinity);
    return this.root;
  }

  /** Starts a walk of `value` (nothing visited yet but the root). */
  begin(value: unknown): void {
    this.guard(() => {
      this.root = this.enter(value);
    });
  }

  /**
   * Visits children until the walk is done (true: the tree is `result`) or `performance.now()`
   * passes `deadline` (false: call again). Checks the clock every 256 children.
   */
  advance(deadline: number, minChildren = 0): boolean {
    const stack = this.stack;
    this.guard(() => {
      for (let visited = 0; ; visited += 256) {
        this.ticks = deadline === Infinity ? Infinity : 256;
        while (stack.depth > 0 && this.ticks > 0) {
          if (!this.step(stack.top())) this.close();
        }
        if (stack.depth === 0 || (visited >= minChildren && performance.now() >= deadline)) return;
      }
    });
    if (stack.depth > 0) return false;
    // Inserting the markers only now lets arrays be filled by index while they are encoded.
    for (const [node, id] of this.arrayIds) node.unshift({ [TREE_TAG]: TreeTag.ArrayId, id });
    this.arrayIds.clear();
    return true;
  }

  /** The tree, once `advance` said the walk is done. */
  get result(): TreeNode {
    return this.root;
  }

  /** Pops the top frame (it is complete). */
  private close(): void {
    const stack = this.stack;
    stack.top().sink = undefined;
    stack.depth--;
  }

  /** Runs a part of the walk; a failure comes out as a WalkFault carrying the path. */
  private guard(fn: () => void): void {
    const stack = this.stack;
    try {
      fn();
    } catch (e) {
      try {
        if (e instanceof DepthFault) {
          const where =
            this.above > 0 ? `a value ${this.above} levels down, at its ${stack.path()}` : stack.path();
          throw new DepthFault(e.maxDepth, where);
        }
        const fault = toFault(e, describeThrownWhileReading);
        throw new WalkFault(stack.path(), fault);
      } finally {
        stack.clear();
      }
    }
    if (stack.depth === 0) stack.clear();
  }

  /** Whether the walk met `o` and is done with everything in it. */
  finished(o: object): boolean {
    return this.seen.has(o) && !this.isOpen(o);
  }

  private isOpen(o: object): boolean {
    const stack = this.stack;
    for (let i = 0; i < stack.depth; i++) if (stack.at(i).orig === o) return true;
    return false;
  }

  /**
   * `o`, being walked, is about to change: go on reading `copy` (its shallow copy from before
   * the change) instead. Maps switch by themselves (see `mapEntries`).
   */
  rebase(o: object, copy: object): void {
    const stack = this.stack;
    for (let i = 0; i < stack.depth; i++) {
      const f = stack.at(i);
      if (f.orig !== o) continue;
      if (f.fill === Fill.Set) {
        const it = (copy as Set<unknown>).values();
        for (let j = 0; j < f.next; j++) it.next();
        f.iterator = it;
      } else if (f.fill !== Fill.Map) {
        f.src = copy;
      }
    }
  }

  /**
   * Visits children of `f` until one opens a frame of its own (true: go fill that first) or `f`
   * is complete (false).
   */
  private step(f: Frame): boolean {
    const stack = this.stack;
    const depth = stack.depth;
    switch (f.fill) {
      case Fill.Plain: {
        const src = f.src as Record<string, unknown>;
        const out = f.out as TreeObject;
        const keys = f.keys as string[];
        const views = f.orig === src ? this.views : undefined;
        while (f.next < f.end) {
          const key = keys[f.next++] as string;
          out[escapeKey(key)] = this.enter(views === undefined ? src[key] : this.read(views, src, key));
          if (stack.depth !== depth || --this.ticks <= 0) return true;
        }
        return false;
      }
      case Fill.Array: {
        const src = f.src as unknown[];
        const out = f.out as TreeNode[];
        const views = f.orig === src ? this.views : undefined;
        while (f.next < f.end) {
          const i = f.next++;
          out[i] = this.enter(views === undefined ? src[i] : this.read(views, src, i));
          if (stack.depth !== depth || --this.ticks <= 0) return true;
        }
        return false;
      }
      case Fill.Sparse: {
        const src = f.src as unknown[];
        const out = f.out as TreeNode[];
        const keys = f.keys as string[];
        while (f.next < f.end) {
          const i = Number(keys[f.next++]);
          out.push([i, this.enter(src[i])]);
          if (stack.depth !== depth || --this.ticks <= 0) return true;
        }
        return false;
      }
      case Fill.Map: {
        const iterator = f.iterator as Iterator<[unknown, unknown]>;
        const out = f.out as TreeNode[];
        for (;;) {
          if (f.onKey) {
            // The key is done (a frame for it may just have closed); now the value.
            f.onKey = false;
            (f.pair as TreeNode[])[1] = this.enter(f.value);
            if (stack.depth !== depth || --this.ticks <= 0) return true;
          }
          const entry = iterator.next();
          if (entry.done === true) return false;
          f.next++;
          f.sink?.(entry.value[0]);
          f.key = entry.value[0];
          f.value = entry.value[1];
          f.onKey = true;
          const pair: TreeNode[] = [null, null];
          f.pair = pair;
          out.push(pair);
          pair[0] = this.enter(f.key);
          if (stack.depth !== depth) return true;
        }
      }
      case Fill.Set: {
        const iterator = f.iterator as Iterator<unknown>;
        const out = f.out as TreeNode[];
        for (;;) {
          const item = iterator.next();
          if (item.done === true) return false;
          f.next++;
          out.push(this.enter(item.value));
          if (stack.depth !== depth || --this.ticks <= 0) return true;
        }
      }
      default: {
        if (f.next >= f.end) {
          this.openErrors.delete(f.out as TreeNode);
          return false;
        }
        f.next++;
        (f.out as TreeObject).c = this.enter(f.src);
        if (stack.depth !== depth) return true;
        this.openErrors.delete(f.out as TreeNode);
        return false;
      }
    }
  }

  /** Item `key` of `o` (read in place) as it was when the walk began. */
  private read(views: WalkViews, o: object, key: string | number): unknown {
    const was = views.was(o, key);
    return was === UNCHANGED ? (o as Record<string | number, unknown>)[key] : was;
  }

  /** A Map's entries as they were when the walk began (sliced walks). */
  private *mapEntries(m: Map<unknown, unknown>, views: WalkViews): Generator<[unknown, unknown]> {
    let done = 0;
    const live = m.entries();
    for (;;) {
      const src = views.source(m);
      if (src !== m) {
        // Copied since: go on in the copy, past the entries already given.
        let i = 0;
        for (const e of (src as Map<unknown, unknown>).entries()) if (i++ >= done) yield e;
        return;
      }
      const n = live.next();
      if (n.done === true) return;
      const was = views.was(m, n.value[0]);
      if (was === ADDED) continue;
      done++;
      yield was === UNCHANGED ? n.value : [n.value[0], was];
    }
  }

  /** The node for `v`; a container comes back empty with a frame pushed to fill it. */
  private enter(v: unknown): TreeNode {
    switch (typeof v) {
      case 'string':
      case 'boolean':
        return v;
      case 'number':
        return Number.isFinite(v) && (v !== 0 || 1 / v > 0) ? v : specialNumber(v);
      case 'object':
        return v === null ? null : this.object(v);
      case 'undefined':
        return { [TREE_TAG]: TreeTag.Undefined };
      case 'bigint':
        return { [TREE_TAG]: TreeTag.BigInt, v: v.toString() };
      case 'function':
        throw new PathFault(
          'is a function; functions cannot be part of a checkpoint image: keep them out of the ' +
            'state and rebuild them on resume',
        );
      default:
        throw new PathFault(
          'is a symbol; symbols cannot be part of a checkpoint image: store a string name instead ' +
            'and map it back to the symbol on resume',
        );
    }
  }

  private object(o: object): TreeNode {
    const prior = this.seen.get(o);
    if (prior !== undefined) {
      if (this.openErrors.has(prior)) {
        // node:v8 (Node 20) writes this but cannot read it back ("Unable to deserialize cloned
        // data"): an image that was acknowledged but cannot be restored is worse than an error.
        throw new PathFault(
          "refers back to an Error from inside that error's own cause; node:v8 cannot restore " +
            'such an image: break the cycle, for example keep an id of the error in the cause',
        );
      }
      return { [TREE_TAG]: TreeTag.Ref, id: this.idOf(prior) };
    }
    if (o === this.hostObject) throw new PathFault(describeHostObject(o));
    if (types.isProxy(o)) {
      throw new PathFault(
        'is a Proxy; proxies cannot be part of a checkpoint image: store the target object instead',
      );
    }
    if (this.views !== undefined) return this.viewed(o, this.views);
    if (Array.isArray(o)) return this.array(o);
    const tag = objectToString.call(o);
    if (tag === '[object Object]') {
      const proto: unknown = Object.getPrototypeOf(o);
      if (proto !== Object.prototype && proto !== null) {
        const refused = hostRefusal(o);
        if (refused !== undefined) throw new PathFault(refused);
      }
      return this.plain(o);
    }
    return this.special(o);
  }

  /**
   * `object` in a sliced walk: containers are read as they were when the walk began (their
   * copy, or in place through `views.was`), and their frames remember the object itself.
   */
  private viewed(o: object, views: WalkViews): TreeNode {
    const src = views.source(o);
    const depth = this.stack.depth;
    let node: TreeNode;
    if (Array.isArray(src)) {
      node = this.array(src, o);
    } else if (objectToString.call(src) === '[object Object]') {
      const proto: unknown = Object.getPrototypeOf(src);
      if (proto !== Object.prototype && proto !== null) {
        const refused = hostRefusal(src);
        if (refused !== undefined) throw new PathFault(refused);
      }
      node = this.plain(src, o);
    } else if (types.isMap(src)) {
      const m = src as Map<unknown, unknown>;
      node = this.collection(o, TreeTag.Map, Fill.Map, src === o ? this.mapEntries(m, views) : m.entries());
      if (views.enterMap !== undefined)
        this.stack.top().sink = views.enterMap(o as Map<unknown, unknown>, m.size);
    } else if (types.isSet(src)) {
      node = this.collection(o, TreeTag.Set, Fill.Set, (src as Set<unknown>).values());
    } else {
      return this.special(o);
    }
    if (this.stack.depth !== depth) this.stack.top().orig = o;
    return node;
  }

  /** Gives the node of an object met twice an id, in place, and returns it. */
  private idOf(node: TreeNode): RefId {
    if (Array.isArray(node)) {
      // Arrays cannot carry a member, so the id rides in front as a marker element.
      let id = this.arrayIds.get(node);
      if (id === undefined) {
        id = this.nextId++;
        this.arrayIds.set(node, id);
      }
      return id;
    }
    const obj = node as TreeObject;
    const tag = obj[TREE_TAG];
    if (tag === undefined) {
      const id = this.keyedId(obj) ?? this.nextId++;
      obj[TREE_TAG] = id;
      return id;
    }
    if (typeof tag === 'number' || isKeyedId(tag)) return tag as RefId;
    if (typeof obj.id === 'number') return obj.id;
    const id = this.nextId++;
    obj.id = id;
    return id;
  }

  /**
   * A record's own `id` (or `_id`) as its reference id, when no other object took it: counted
   * ids shift for every object after an insertion, so a state holding its records both in a
   * list and in a Map by id would otherwise get a delta touching every record.
   */
  private keyedId(obj: TreeObject): string | undefined {
    let own = obj.id;
    if (typeof own !== 'string' && typeof own !== 'number') own = obj._id;
    const id = typeof own === 'string' ? `#s:${own}` : typeof own === 'number' ? `#n:${own}` : undefined;
    if (id === undefined || this.keyedIds.has(id)) return undefined;
    this.keyedIds.add(id);
    return id;
  }

  /** Refuses a container that would open one level more than `maxDepth`. */
  private nest(): void {
    if (this.stack.depth + this.above >= this.maxDepth) throw new DepthFault(this.maxDepth, '');
  }

  /** `o` read from `src` (itself, or its copy in a sliced walk). */
  private plain(src: object, o: object = src): TreeObject {
    this.nest();
    const out: TreeObject = {};
    this.seen.set(o, out);
    let keys = Object.keys(src);
    // Read in place in a sliced walk: keys added since the walk began are not part of it.
    const views = this.views;
    if (views !== undefined && src === o && views.overlaid(o))
      keys = keys.filter((k) => views.was(o, k) !== ADDED);
    if (keys.length > 0) this.stack.push(Fill.Plain, src, out, keys, keys.length);
    return out;
  }

  private array(a: unknown[], o: object = a): TreeNode {
    this.nest();
    const length = a.length;
    for (let i = 0; i < length; i++) {
      if (a[i] === undefined && !hasOwn(a, i)) return this.sparse(a, o);
    }
    // An exactly sized copy, overwritten in place: growing an array by push costs several
    // times more (over-allocated backing stores, all of them retained). slice() would build a
    // subclass instance for an Array subclass, hence the check.
    const out = (a.constructor === Array ? a.slice() : new Array<TreeNode>(length)) as TreeNode[];
    this.seen.set(o, out);
    if (length > 0) this.stack.push(Fill.Array, a, out, undefined, length);
    return out;
  }

  private sparse(a: unknown[], o: object = a): TreeObject {
    const entries: TreeNode[] = [];
    const node: TreeObject = { [TREE_TAG]: TreeTag.Sparse, l: a.length, e: entries };
    this.seen.set(o, node);
    // Extra named properties are not carried.
    const indices = Object.keys(a).filter(isArrayIndex);
    if (indices.length > 0) this.stack.push(Fill.Sparse, a, entries, indices, indices.length);
    return node;
  }

  /** Objects whose tag is not `[object Object]`: built-ins, or classes with a toStringTag. */
  private special(o: object): TreeNode {
    if (types.isDate(o)) {
      const t = dateGetTime.call(o);
      return this.leaf(o, { [TREE_TAG]: TreeTag.Date, v: Number.isNaN(t) ? null : t });
    }
    if (types.isMap(o))
      return this.collection(o, TreeTag.Map, Fill.Map, (o as Map<unknown, unknown>).entries());
    if (types.isSet(o)) return this.collection(o, TreeTag.Set, Fill.Set, (o as Set<unknown>).values());
    if (ArrayBuffer.isView(o)) return this.view(o);
    if (types.isRegExp(o)) {
      return this.leaf(o, {
        [TREE_TAG]: TreeTag.RegExp,
        s: regExpSource.call(o) as string,
        f: regExpFlags.call(o) as string,
      });
    }
    if (types.isArrayBuffer(o)) return this.arrayBuffer(o as ArrayBuffer);
    if (types.isNativeError(o)) return this.error(o as Error);
    if (types.isBoxedPrimitive(o) && !types.isSymbolObject(o)) {
      return this.leaf(o, { [TREE_TAG]: TreeTag.Boxed, v: this.enter(unbox(o)) });
    }
    const refused = refusal(o);
    if (refused !== undefined) throw new PathFault(refused);
    return this.plain(o);
  }

  private leaf(o: object, node: TreeObject): TreeObject {
    this.seen.set(o, node);
    return node;
  }

  private collection(o: object, tag: TreeTag, fill: Fill, iterator: Iterator<unknown>): TreeObject {
    this.nest();
    const entries: TreeNode[] = [];
    const node: TreeObject = { [TREE_TAG]: tag, e: entries };
    this.seen.set(o, node);
    this.stack.push(fill, o, entries, undefined, 0);
    this.stack.top().iterator = iterator;
    return node;
  }

  private view(v: ArrayBufferView): TreeObject {
    // Node's serializer writes a Buffer as a Buffer only when its constructor is Buffer.
    const name = (v as { constructor?: unknown }).constructor === Buffer ? 'Buffer' : viewName(v);
    if (name !== 'Buffer' && !VIEW_CTORS.has(name)) {
      throw new PathFault(
        `is a ${name}, which node:v8 cannot serialize; copy it into one of ${[...VIEW_CTORS.keys()].join(', ')}`,
      );
    }
    return this.leaf(v, {
      [TREE_TAG]: TreeTag.View,
      t: name,
      b: base64Of(v.buffer, v.byteOffset, v.byteLength),
    });
  }

  private arrayBuffer(ab: ArrayBuffer): TreeObject {
    if (ab.byteLength === 0 && isDetached(ab)) {
      throw new PathFault(
        'is a detached ArrayBuffer (its memory was transferred away); it cannot be part of a ' +
          'checkpoint image: keep the buffer that received it instead',
      );
    }
    const node: TreeObject = { [TREE_TAG]: TreeTag.ArrayBuffer, b: base64Of(ab, 0, ab.byteLength) };
    const resizable = ab as { resizable?: boolean; maxByteLength?: number };
    if (resizable.resizable === true && typeof resizable.maxByteLength === 'number') {
      node.max = resizable.maxByteLength;
    }
    return this.leaf(ab, node);
  }

  /** Carries what v8 carries: the standard class by `name`, own `message`, `stack`, own `cause`. */
  private error(err: Error): TreeObject {
    const node: TreeObject = { [TREE_TAG]: TreeTag.Error, n: 'Error' };
    this.seen.set(err, node);
    const name: unknown = err.name;
    if (typeof name === 'string' && ERROR_CTORS.has(name)) node.n = name;
    const message = Object.getOwnPropertyDescriptor(err, 'message');
    if (message !== undefined && 'value' in message) node.m = String(message.value);
    const stack: unknown = err.stack;
    if (typeof stack === 'string') node.s = stack;
    const cause = Object.getOwnPropertyDescriptor(err, 'cause');
    if (cause !== undefined && 'value' in cause) {
      this.nest();
      this.openErrors.add(node);
      this.stack.push(Fill.Cause, cause.value, node, undefined, 1);
    }
    return node;
  }
}

/** A fault with the path where it happened. */
class WalkFault extends Error {
  constructor(
    readonly path: string,
    readonly fault: PathFault,
  ) {
    super(fault.reason);
  }
}

/**
 * A container nested deeper than the walk's `maxDepth`: node:v8 (and JSON.stringify) recurse on
 * the call stack and fail with "Maximum call stack size exceeded" not far above 1 000 levels.
 */
class DepthFault extends Error {
  constructor(
    readonly maxDepth: number,
    readonly path: string,
  ) {
    super(`nested more than ${maxDepth} levels deep`);
  }
}

/** The `LimitError` for a value nested deeper than `maxDepth`, at `path`. */
export function depthLimitError(maxDepth: number, path: string): LimitError {
  return new LimitError(
    'limits.maxDepth',
    `the state is nested more than ${maxDepth} levels deep (objects, arrays, Maps, Sets and error causes inside one another)${path ? `, at ${shortPath(path)}` : ''}: flatten it, for example keep records in a Map by id and refer to them by id`,
  );
}

/** The wrapped primitive, read from the internal slot as v8 does (a valueOf override is ignored). */
function unbox(o: object): unknown {
  if (types.isNumberObject(o)) return Number.prototype.valueOf.call(o);
  if (types.isStringObject(o)) return String.prototype.valueOf.call(o);
  if (types.isBooleanObject(o)) return Boolean.prototype.valueOf.call(o);
  return BigInt.prototype.valueOf.call(o);
}

function viewName(v: ArrayBufferView): string {
  if (types.isDataView(v)) return 'DataView';
  const name = typedArrayName.call(v);
  return typeof name === 'string' ? name : className(v);
}

function isDetached(ab: ArrayBuffer): boolean {
  try {
    new Uint8Array(ab);
    return false;
  } catch {
    return true;
  }
}

function isArrayIndex(key: string): boolean {
  const c = key.charCodeAt(0);
  if (c < 48 || c > 57) return false;
  const n = Number(key);
  return n < 4294967295 && String(n) === key;
}

/**
 * A reference id: a counter, or `#s:<id>` / `#n:<id>` taken from the record's own `id`/`_id`
 * (a `"$rp"` string starting with `#` marks a plain object that defines one).
 */
type RefId = number | string;

// Deliberately not a type guard: a string that fails it is still a string (a tag name).
function isKeyedId(tag: TreeNode | undefined): boolean {
  return typeof tag === 'string' && tag.charCodeAt(0) === 0x23; // '#'
}

function isArrayIdMarker(node: TreeNode | undefined): node is TreeObject {
  return (
    typeof node === 'object' && node !== null && !Array.isArray(node) && node[TREE_TAG] === TreeTag.ArrayId
  );
}

/**
 * Encodes `value` as a typed tree: plain JSON that `fromTree` turns back into an equal value
 * with the same reference graph (shared objects stay shared, cycles stay cycles).
 *
 * Accepts what `node:v8` serializes (see the module comment for the few differences) and
 * throws `SerializationError` for anything else, with `path` naming the first offending value
 * in v8's walk order (`state.handlers.onTick`, `state.items[3]`, `state.byId<Map key "x">`)
 * and a message saying how to fix it. Two deliberate differences: an Error reached again from
 * inside its own `cause` is refused (node:v8 writes it but cannot read it back), and nesting
 * is not limited by the call stack (node:v8 stops near 3000 levels; `serializeImage` then
 * fails). Objects that are native handles of some addon (not Node's own classes) cannot be
 * recognized here and are walked as plain objects; `serializeImage` reports those.
 *
 * Linear in the size of `value`, invoking getters once, like node:v8. The returned tree is
 * fresh: nothing in it is shared with `value` or with itself.
 */
export function toTree(value: unknown, maxDepth = Infinity, above = 0): TreeNode {
  // Plain JSON primitives are their own nodes: no walk needed (incremental paths call this a lot).
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      if (Number.isFinite(value) && (value !== 0 || 1 / value > 0)) return value;
      break;
    case 'object':
      if (value === null) return null;
  }
  return runEncoder(new Encoder(undefined, maxDepth, above), value);
}

function encodeTree(value: unknown, hostObject: object | undefined): TreeNode {
  return runEncoder(new Encoder(hostObject), value);
}

function runEncoder(encoder: Encoder, value: unknown): TreeNode {
  try {
    return encoder.run(value);
  } catch (e) {
    if (e instanceof DepthFault) throw depthLimitError(e.maxDepth, e.path);
    if (!(e instanceof WalkFault)) throw e;
    throw new SerializationError(e.path, `${shortPath(e.path)} ${e.fault.reason}`, { cause: e.fault.cause });
  }
}

/** `toTree`'s result plus what the walk learned about the value's object graph. */
export interface IndexedTree {
  readonly tree: TreeNode;
  /**
   * False when every object in the value is reached exactly once (the value is a tree): then
   * the tree holds no ids and no refs, and a change to one object changes only its own node.
   */
  readonly shared: boolean;
  /** Every object of the value (containers and leaves), in walk order, to its node. */
  readonly objects: ReadonlyMap<object, TreeNode>;
}

/**
 * `toTree`, also telling whether the value shares objects and which objects it holds. Made for
 * the image encoder's incremental paths, which work only on tree-shaped states. Same errors as
 * `toTree`.
 */
export function toTreeIndexed(value: unknown, maxDepth = Infinity, above = 0): IndexedTree {
  const encoder = new Encoder(undefined, maxDepth, above);
  const tree = runEncoder(encoder, value);
  return { tree, shared: encoder.shared, objects: encoder.objects() };
}

/** `WalkViews.was`: the item did not change since the walk began. */
export const UNCHANGED: unique symbol = Symbol('unchanged');
/** `WalkViews.was`: the item was not there when the walk began (it was added since). */
export const ADDED: unique symbol = Symbol('added');

/**
 * What a sliced walk of a live state reads instead of the containers as they are now: the app
 * goes on changing its state between two slices, and the walk must see the state as it was when
 * it began (copy-on-write, kept by the caller: src/image/cow.ts).
 */
export interface WalkViews {
  /** A shallow copy of container `o` from when the walk began, or `o` itself (read in place). */
  source(o: object): object;
  /** For `o` read in place: what item `key` was when the walk began (`UNCHANGED`, `ADDED`, or the value). */
  was(o: object, key: unknown): unknown;
  /** Whether some item of `o` changed since the walk began (then `was` is asked per item). */
  overlaid(o: object): boolean;
  /** Called as the walk enters a Map of `size` entries; the sink it returns is told every key in order. */
  enterMap?(m: Map<unknown, unknown>, size: number): ((key: unknown) => void) | undefined;
}

/**
 * A walk of a value into its typed tree, done a slice at a time (`toTreeIndexed` in pieces):
 * the caller gives the event loop a turn between slices. `views` keeps the walk on the state as
 * it was at `begin` while the app changes it.
 */
export class SlicedTreeWalk {
  readonly #encoder: Encoder;
  #done = false;

  constructor(value: unknown, maxDepth: number, views: WalkViews) {
    this.#encoder = new Encoder(undefined, maxDepth, 0, views);
    this.#wrap(() => this.#encoder.begin(value));
  }

  /**
   * Walks until done (true) or `performance.now()` passes `deadline` (false), but not before
   * about `minChildren` children were visited. Throws as `toTree` does.
   */
  advance(deadline: number, minChildren = 0): boolean {
    if (!this.#done) this.#done = this.#wrap(() => this.#encoder.advance(deadline, minChildren));
    return this.#done;
  }

  /** Whether the walk met `o` and is done with everything in it (changes to it no longer matter). */
  finished(o: object): boolean {
    return this.#done || this.#encoder.finished(o);
  }

  /** `o`, possibly being walked now, will be read from `copy` from now on. */
  rebase(o: object, copy: object): void {
    if (!this.#done) this.#encoder.rebase(o, copy);
  }

  /** The result, once `advance` returned true. */
  get result(): IndexedTree {
    return { tree: this.#encoder.result, shared: this.#encoder.shared, objects: this.#encoder.objects() };
  }

  #wrap<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof DepthFault) throw depthLimitError(e.maxDepth, e.path);
      if (!(e instanceof WalkFault)) throw e;
      throw new SerializationError(e.path, `${shortPath(e.path)} ${e.fault.reason}`, {
        cause: e.fault.cause,
      });
    }
  }
}

/** Encodes a key of a plain object as the typed tree stores it (see the module comment). */
export { escapeKey as treeKey };

/**
 * Walks `value` as `toTree` does and returns the SerializationError that names the first value
 * node:v8 cannot serialize, or undefined when the walk finds nothing to blame.
 *
 * @param hostObject an object node:v8 refused as a host object (seen through a serializer's
 *   `_writeHostObject`), so that its path can be named too.
 */
export function findUnserializable(value: unknown, hostObject?: object): SerializationError | undefined {
  try {
    encodeTree(value, hostObject);
    return undefined;
  } catch (e) {
    if (e instanceof SerializationError) return e;
    throw e;
  }
}

/** One fromTree walk. */
class Decoder {
  private readonly byId = new Map<RefId, object>();
  private definitions: Map<RefId, TreeNode> | undefined;
  private readonly stack = new FrameStack(true);
  /** With `fromTreeIndexed`: every object made, with the node it was made from. */
  readonly seen: Map<object, TreeNode> | undefined;
  /** An object was reached twice (a ref): the value is not a tree. */
  shared = false;

  constructor(
    private readonly root: TreeNode,
    indexed = false,
  ) {
    this.seen = indexed ? new Map() : undefined;
  }

  /** Decodes the whole tree; a malformed node comes out as a WalkFault carrying the path. */
  run(): unknown {
    const stack = this.stack;
    try {
      const value = this.enter(this.root);
      while (stack.depth > 0) {
        if (!this.step(stack.top())) stack.depth--;
      }
      return value;
    } catch (e) {
      throw new WalkFault(stack.path(), toFault(e, describeMalformed));
    } finally {
      stack.clear();
    }
  }

  /** As Encoder.step: visits children until one opens a frame (true) or `f` is done (false). */
  private step(f: Frame): boolean {
    const stack = this.stack;
    const depth = stack.depth;
    switch (f.fill) {
      case Fill.Plain: {
        const src = f.src as TreeObject;
        const out = f.out as Record<string, unknown>;
        const keys = f.keys as string[];
        while (f.next < f.end) {
          const k = keys[f.next++] as string;
          const value = this.enter(src[k] as TreeNode);
          const key = unescapeKey(k);
          if (key === '__proto__') {
            Object.defineProperty(out, key, { value, writable: true, enumerable: true, configurable: true });
          } else {
            out[key] = value;
          }
          if (stack.depth !== depth) return true;
        }
        return false;
      }
      case Fill.Array: {
        const src = f.src as TreeNode[];
        const out = f.out as unknown[];
        const start = f.start;
        while (f.next < f.end) {
          const i = f.next++;
          out[i - start] = this.enter(src[i] as TreeNode);
          if (stack.depth !== depth) return true;
        }
        return false;
      }
      case Fill.Sparse: {
        const src = f.src as TreeNode[];
        const out = f.out as unknown[];
        while (f.next < f.end) {
          const entry = src[f.next++];
          if (!Array.isArray(entry) || entry.length !== 2)
            throw new PathFault('is not an [index, value] pair');
          const index = entry[0];
          if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= out.length) {
            throw new PathFault(`has a bad index ${JSON.stringify(index)}`);
          }
          out[index] = this.enter(entry[1] as TreeNode);
          if (stack.depth !== depth) return true;
        }
        return false;
      }
      case Fill.Map: {
        const src = f.src as TreeNode[];
        const out = f.out as Map<unknown, unknown>;
        for (;;) {
          if (f.onKey) {
            // The key is done (a frame for it may just have closed); now the value.
            f.onKey = false;
            out.set(f.key, this.enter((f.pair as TreeNode[])[1] as TreeNode));
            if (stack.depth !== depth) return true;
          }
          if (f.next >= f.end) return false;
          const pair = src[f.next++];
          f.onKey = true;
          if (!Array.isArray(pair) || pair.length !== 2) throw new PathFault('is not a [key, value] pair');
          f.pair = pair;
          f.key = undefined;
          f.key = this.enter(pair[0] as TreeNode);
          if (stack.depth !== depth) return true;
        }
      }
      case Fill.Set: {
        const src = f.src as TreeNode[];
        const out = f.out as Set<unknown>;
        while (f.next < f.end) {
          out.add(this.enter(src[f.next++] as TreeNode));
          if (stack.depth !== depth) return true;
        }
        return false;
      }
      default: {
        if (f.next >= f.end) return false;
        f.next++;
        defineHidden(f.out as object, 'cause', this.enter(f.src as TreeNode));
        return stack.depth !== depth;
      }
    }
  }

  /** `enterNode`, noting the objects made when indexed. */
  private enter(n: TreeNode): unknown {
    const v = this.enterNode(n);
    const seen = this.seen;
    if (seen !== undefined && typeof v === 'object' && v !== null) {
      if (seen.has(v)) this.shared = true;
      else seen.set(v, n);
    }
    return v;
  }

  /** The value for node `n`; a container comes back empty with a frame pushed to fill it. */
  private enterNode(n: TreeNode): unknown {
    switch (typeof n) {
      case 'string':
      case 'number':
      case 'boolean':
        return n;
      case 'object':
        break;
      default:
        throw new PathFault(`is not a JSON value (${typeof n})`);
    }
    if (n === null) return null;
    if (Array.isArray(n)) return this.array(n);
    const tag = n[TREE_TAG];
    if (tag === undefined) return this.plain(n, undefined);
    if (typeof tag === 'number' || isKeyedId(tag)) return this.plain(n, checkId(tag));
    switch (tag) {
      case TreeTag.Undefined:
        return undefined;
      case TreeTag.Number:
        return specialNumberValue(n.v);
      case TreeTag.BigInt:
        if (typeof n.v !== 'string' || !/^-?\d+$/.test(n.v))
          throw new PathFault('is a malformed BigInt node');
        return BigInt(n.v);
      case TreeTag.Ref:
        return this.ref(checkId(n.id));
      case TreeTag.Map:
        return this.collection(n, new Map(), Fill.Map);
      case TreeTag.Set:
        return this.collection(n, new Set(), Fill.Set);
      case TreeTag.Date:
        return this.leaf(n, () => {
          const time = n.v;
          if (time !== null && typeof time !== 'number') throw new PathFault('is a malformed Date node');
          return new Date(time ?? Number.NaN);
        });
      case TreeTag.RegExp:
        return this.leaf(n, () => {
          if (typeof n.s !== 'string' || typeof n.f !== 'string') {
            throw new PathFault('is a malformed RegExp node');
          }
          return new RegExp(n.s, n.f);
        });
      case TreeTag.View:
        return this.leaf(n, () => decodeView(n));
      case TreeTag.ArrayBuffer:
        return this.leaf(n, () => decodeArrayBuffer(n));
      case TreeTag.Boxed:
        return this.leaf(n, () => {
          const v = n.v;
          // Only primitives box; their nodes never open a frame.
          if (typeof v === 'object' && v !== null && (Array.isArray(v) || !isPrimitiveTag(v[TREE_TAG]))) {
            throw new PathFault('is a boxed value that is not a number, string, boolean or BigInt');
          }
          const primitive = this.enter(v);
          const t = typeof primitive;
          if (t !== 'number' && t !== 'string' && t !== 'boolean' && t !== 'bigint') {
            throw new PathFault('is a boxed value that is not a number, string, boolean or BigInt');
          }
          return Object(primitive) as object;
        });
      case TreeTag.Error:
        return this.error(n);
      case TreeTag.Sparse:
        return this.sparse(n);
      case TreeTag.ArrayId:
        throw new PathFault('is an array id marker outside the first element of an array');
      default:
        throw new PathFault(`has an unknown tag ${JSON.stringify(tag)}`);
    }
  }

  /** The object already decoded for a node's id (a node met again after a forward ref). */
  private existing(n: TreeObject): object | undefined {
    const id = n.id;
    return id === undefined ? undefined : this.byId.get(checkId(id));
  }

  private register(id: TreeNode | undefined, value: object): void {
    if (id !== undefined) this.byId.set(checkId(id), value);
  }

  private leaf(n: TreeObject, make: () => object): object {
    const prior = this.existing(n);
    if (prior !== undefined) return prior;
    const value = make();
    this.register(n.id, value);
    return value;
  }

  private plain(n: TreeObject, id: RefId | undefined): object {
    if (id !== undefined) {
      const prior = this.byId.get(id);
      if (prior !== undefined) return prior;
    }
    const out: Record<string, unknown> = {};
    if (id !== undefined) this.byId.set(id, out);
    const keys = Object.keys(n);
    if (id !== undefined) keys.splice(keys.indexOf(TREE_TAG), 1);
    if (keys.length > 0) this.stack.push(Fill.Plain, n, out, keys, keys.length);
    return out;
  }

  private array(n: TreeNode[]): unknown[] {
    const first = n[0];
    const start = isArrayIdMarker(first) ? 1 : 0;
    if (start === 1) {
      const prior = this.byId.get(checkId((first as TreeObject).id));
      if (prior !== undefined) return prior as unknown[];
    }
    // An exactly sized packed copy, overwritten in place (see Encoder.array).
    const out: unknown[] = (n.constructor === Array ? n : Array.from(n)).slice(start);
    if (start === 1) this.byId.set((first as TreeObject).id as RefId, out);
    if (n.length > start) this.stack.push(Fill.Array, n, out, undefined, n.length, start);
    return out;
  }

  private sparse(n: TreeObject): unknown[] {
    const prior = this.existing(n);
    if (prior !== undefined) return prior as unknown[];
    const length = n.l;
    const entries = n.e;
    if (typeof length !== 'number' || !Number.isInteger(length) || length < 0 || length > 4294967295) {
      throw new PathFault('is a sparse array node with a bad length');
    }
    if (!Array.isArray(entries)) throw new PathFault('is a sparse array node without entries');
    const out: unknown[] = new Array<unknown>(length);
    this.register(n.id, out);
    if (entries.length > 0) this.stack.push(Fill.Sparse, entries, out, undefined, entries.length);
    return out;
  }

  private collection(n: TreeObject, out: Map<unknown, unknown> | Set<unknown>, fill: Fill): object {
    const prior = this.existing(n);
    if (prior !== undefined) return prior;
    const entries = n.e;
    if (!Array.isArray(entries))
      throw new PathFault(`is a ${n[TREE_TAG] === TreeTag.Map ? 'Map' : 'Set'} node without entries`);
    this.register(n.id, out);
    if (entries.length > 0) this.stack.push(fill, entries, out, undefined, entries.length);
    return out;
  }

  /** Rebuilds an error the way v8 does: own non-enumerable message, stack and cause. */
  private error(n: TreeObject): object {
    const prior = this.existing(n);
    if (prior !== undefined) return prior;
    const Ctor = typeof n.n === 'string' ? ERROR_CTORS.get(n.n) : undefined;
    if (Ctor === undefined) throw new PathFault('is an Error node with an unknown class');
    if ((n.m !== undefined && typeof n.m !== 'string') || (n.s !== undefined && typeof n.s !== 'string')) {
      throw new PathFault('is a malformed Error node');
    }
    const err = new Ctor();
    if (n.m !== undefined) defineHidden(err, 'message', n.m);
    defineHidden(err, 'stack', n.s);
    this.register(n.id, err);
    if (hasOwn(n, 'c')) this.stack.push(Fill.Cause, n.c, err, undefined, 1);
    return err;
  }

  private ref(id: RefId): object {
    const value = this.byId.get(id);
    if (value !== undefined) return value;
    // The definition comes later in walk order: a tree toTree made never does this, but a tree
    // edited by other means might. Index every definition once and enter this one now (its
    // object exists at once; a frame fills it); when the walk reaches it, `existing` hands back
    // the same object.
    this.definitions ??= indexDefinitions(this.root);
    const definition = this.definitions.get(id);
    if (definition === undefined) {
      throw new PathFault(`refers to id ${JSON.stringify(id)}, which no node defines`);
    }
    const entered = this.enter(definition);
    if (typeof entered !== 'object' || entered === null) {
      throw new PathFault(`refers to id ${JSON.stringify(id)}, which is not an object`);
    }
    return entered;
  }
}

/** Tags whose node is a primitive value (the only ones a boxed node may hold). */
function isPrimitiveTag(tag: TreeNode | undefined): boolean {
  return tag === TreeTag.Number || tag === TreeTag.BigInt;
}

function defineHidden(target: object, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, writable: true, enumerable: false, configurable: true });
}

function checkId(id: TreeNode | undefined): RefId {
  if (isKeyedId(id) || (typeof id === 'number' && Number.isSafeInteger(id) && id > 0)) return id as RefId;
  throw new PathFault(`has a bad reference id ${JSON.stringify(id)}`);
}

function specialNumberValue(v: TreeNode): number {
  switch (v) {
    case 'NaN':
      return Number.NaN;
    case 'Infinity':
      return Number.POSITIVE_INFINITY;
    case '-Infinity':
      return Number.NEGATIVE_INFINITY;
    case '-0':
      return -0;
    default:
      throw new PathFault('is a malformed number node');
  }
}

/** Decodes base64 straight into a fresh, exactly sized ArrayBuffer. */
function bytesOf(b: TreeNode, maxByteLength?: number): ArrayBuffer {
  if (typeof b !== 'string') throw new PathFault('has no base64 bytes');
  const estimate = Buffer.byteLength(b, 'base64');
  let ab =
    maxByteLength === undefined
      ? new ArrayBuffer(estimate)
      : new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer)(
          estimate,
          {
            maxByteLength,
          },
        );
  const written = Buffer.from(ab).write(b, 'base64');
  if (written !== estimate) {
    if (maxByteLength === undefined) {
      ab = ab.slice(0, written);
    } else {
      (ab as unknown as { resize(n: number): void }).resize(written);
    }
  }
  return ab;
}

function decodeView(n: TreeObject): object {
  const name = n.t;
  if (name === 'Buffer') {
    if (typeof n.b !== 'string') throw new PathFault('has no base64 bytes');
    return Buffer.from(n.b, 'base64');
  }
  const Ctor = typeof name === 'string' ? VIEW_CTORS.get(name) : undefined;
  if (Ctor === undefined) throw new PathFault(`is a view of unknown type ${JSON.stringify(name)}`);
  const ab = bytesOf(n.b);
  if (ab.byteLength % (Ctor.BYTES_PER_ELEMENT ?? 1) !== 0) {
    throw new PathFault(`holds ${ab.byteLength} bytes, not a whole number of ${String(name)} elements`);
  }
  return new Ctor(ab);
}

function decodeArrayBuffer(n: TreeObject): object {
  const max = n.max;
  if (max !== undefined && (typeof max !== 'number' || !Number.isSafeInteger(max) || max < 0)) {
    throw new PathFault('is an ArrayBuffer node with a bad maxByteLength');
  }
  return bytesOf(n.b, max);
}

/** Every node that defines an id, by id: only needed for trees with forward references. */
function indexDefinitions(root: TreeNode): Map<RefId, TreeNode> {
  const found = new Map<RefId, TreeNode>();
  const stack: TreeNode[] = [root];
  while (stack.length > 0) {
    const n = stack.pop();
    if (typeof n !== 'object' || n === null) continue;
    if (Array.isArray(n)) {
      const first = n[0];
      if (isArrayIdMarker(first) && typeof first.id === 'number') found.set(first.id, n);
      for (let i = n.length - 1; i >= 0; i--) stack.push(n[i] as TreeNode);
      continue;
    }
    const tag = n[TREE_TAG];
    if (typeof tag === 'number' || isKeyedId(tag)) {
      found.set(tag as RefId, n);
    } else if (
      typeof tag === 'string' &&
      tag !== TreeTag.Ref &&
      tag !== TreeTag.ArrayId &&
      typeof n.id === 'number'
    ) {
      found.set(n.id, n);
    }
    for (const key of Object.keys(n)) stack.push(n[key] as TreeNode);
  }
  return found;
}

/**
 * Decodes a typed tree made by `toTree` (possibly after `patchTree`) back into the value, with
 * the same reference graph. Never mutates `node`; the result shares nothing with it.
 *
 * Throws `ImageError` naming the path of the first malformed node (an unknown tag, a dangling
 * reference, bytes that do not fit their view type); trees come off the wire, so nothing here
 * trusts them.
 */
export function fromTree(node: TreeNode): unknown {
  return decode(node, false).value;
}

/**
 * `fromTree`, also returning every object it made with the node it was made from (what
 * `toTreeIndexed` returns for a walk of the value): a new primary's tracker adopts them, so the
 * state it resumes is tracked without a whole-state walk. `objects` is undefined when the value
 * shares objects (the tree has refs).
 */
export function fromTreeIndexed(node: TreeNode): {
  value: unknown;
  objects: ReadonlyMap<object, TreeNode> | undefined;
} {
  return decode(node, true);
}

function decode(
  node: TreeNode,
  indexed: boolean,
): { value: unknown; objects: ReadonlyMap<object, TreeNode> | undefined } {
  try {
    const d = new Decoder(node, indexed);
    const value = d.run();
    return { value, objects: d.shared ? undefined : d.seen };
  } catch (e) {
    if (!(e instanceof WalkFault)) throw e;
    throw new ImageError(`image tree is malformed: ${shortPath(e.path)} ${e.fault.reason}`, {
      cause: e.fault.cause,
    });
  }
}

/**
 * A deep copy of a typed tree, sharing nothing with it. Trees are plain JSON without shared
 * nodes, which makes this several times faster than structuredClone. Iterative: any depth.
 */
export function cloneTree(node: TreeNode): TreeNode {
  if (typeof node !== 'object' || node === null) return node;
  const root = shallowCopy(node);
  // Copies whose children still point into the original.
  const pending: (TreeNode[] | TreeObject)[] = [root];
  while (pending.length > 0) {
    const copy = pending.pop() as TreeNode[] | TreeObject;
    if (Array.isArray(copy)) {
      for (let i = 0; i < copy.length; i++) {
        const child = copy[i] as TreeNode;
        if (typeof child === 'object' && child !== null) pending.push((copy[i] = shallowCopy(child)));
      }
    } else {
      const keys = Object.keys(copy);
      for (let i = 0; i < keys.length; i++) {
        const key = keys[i] as string;
        const child = copy[key] as TreeNode;
        if (typeof child === 'object' && child !== null) pending.push((copy[key] = shallowCopy(child)));
      }
    }
  }
  return root;
}

function shallowCopy(node: TreeNode[] | TreeObject): TreeNode[] | TreeObject {
  if (Array.isArray(node)) return node.slice();
  const out: TreeObject = {};
  const keys = Object.keys(node);
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i] as string;
    // A tree parsed from JSON may hold an own "__proto__": keep it a member, never a prototype.
    if (key === '__proto__') {
      Object.defineProperty(out, key, {
        value: node[key],
        writable: true,
        enumerable: true,
        configurable: true,
      });
    } else {
      out[key] = node[key] as TreeNode;
    }
  }
  return out;
}

/**
 * Whether two typed trees are equal: same JSON, key order included. Stops at the first
 * difference. Iterative: any depth.
 */
export function treesEqual(a: TreeNode, b: TreeNode): boolean {
  const pending: TreeNode[] = [a, b];
  while (pending.length > 0) {
    const y = pending.pop() as TreeNode;
    const x = pending.pop() as TreeNode;
    if (x === y) continue;
    if (typeof x !== 'object' || typeof y !== 'object' || x === null || y === null) return false;
    if (Array.isArray(x)) {
      if (!Array.isArray(y) || x.length !== y.length) return false;
      for (let i = x.length - 1; i >= 0; i--) {
        const xi = x[i] as TreeNode;
        const yi = y[i] as TreeNode;
        if (xi === yi) continue;
        if (typeof xi !== 'object' || xi === null) return false;
        pending.push(xi, yi);
      }
      continue;
    }
    if (Array.isArray(y)) return false;
    const keys = Object.keys(x);
    const otherKeys = Object.keys(y);
    if (keys.length !== otherKeys.length) return false;
    for (let i = keys.length - 1; i >= 0; i--) {
      const key = keys[i] as string;
      if (key !== otherKeys[i]) return false;
      const xk = x[key] as TreeNode;
      const yk = y[key] as TreeNode;
      if (xk === yk) continue;
      if (typeof xk !== 'object' || xk === null) return false;
      pending.push(xk, yk);
    }
  }
  return true;
}
