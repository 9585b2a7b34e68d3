/** The sidecar's config file: loading, validation, environment overrides (docs/config.md). */
export {
  ConfigFileError,
  ENV_OVERRIDES,
  didYouMean,
  loadConfig,
  parseConfig,
  toStartOptions,
  type ConfigProblem,
  type EnvOverride,
  type SidecarConfig,
} from './load.js';
export {
  ConfigSchema,
  FIELD_DOCS,
  LogLevels,
  RestartPolicies,
  StorageKinds,
  type FieldDoc,
  type LogLevel,
  type ParsedConfig,
  type RestartPolicy,
  type StorageKind,
} from './schema.js';
