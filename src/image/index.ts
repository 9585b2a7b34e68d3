/**
 * Execution images: the application state as v8 bytes (keyframes) and as a typed JSON tree whose
 * differences travel as deltas.
 */
export { deserializeImage, serializeImage } from './serialize.js';
export { TREE_TAG, TreeTag, cloneTree, fromTree, toTree, treesEqual } from './typed-tree.js';
export type { TreeNode, TreeObject } from './typed-tree.js';
export { decodeDelta, diffTrees, encodeDelta, patchTree, patchTreeInPlace } from './delta.js';
export type { ImageDelta } from './delta.js';
