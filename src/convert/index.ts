/**
 * Export of trained models as single-file `.safetensors` — the public surface of `src/convert/`.
 * `convertCheckpoint` turns any Diffusers folder (SD 1.x, 2.x, XL; local or in a store) into one
 * checkpoint; `planLora` + the writers do the same for Diffusers/peft LoRA files; `exportRun` and
 * `downloadExport` are the session-level operations behind `booth export` and `booth download`.
 * Everything streams: memory stays bounded whatever the model size. See docs/export.md.
 */
export { convertCheckpoint, planCheckpoint, detectArchitecture, checkAgainstLayout, type CheckpointOptions, type CheckpointPlan, type ConvertResult, type ConvertTarget } from './checkpoint.js';
export { loadComponent, localFolder, storeFolder, type Component, type ModelFolder, type TensorRef } from './diffusers.js';
export { convertFloats, f16BitsToF32, f32BitsToBf16, f32BitsToF16, FLOAT_DTYPES, nativeFloat16, type FloatDType } from './dtype.js';
export { completeRuns, downloadExport, exportKeys, exportRun, listExports, EXPORT_NAME_PATTERN, type DownloadResult, type ExportOptions, type ExportRecord } from './export.js';
export { createStreamHasher, openFileSource, openStoreSource, writeFileAtomic, type ByteSource, type StreamHasher } from './io.js';
export { mapHfClip, mapOpenClip, mapUNet, mapVae, unetKey, vaeKey, type ComponentMap, type MappedTensor } from './keymap.js';
export {
  clipConfig,
  diffusersUNetShapes,
  diffusersVaeShapes,
  hfClipShapes,
  ldmUNetShapes,
  ldmVaeShapes,
  openClipShapes,
  unetConfig,
  vaeConfig,
  type ClipConfig,
  type Shapes,
  type UNetConfig,
  type VaeConfig,
} from './layouts.js';
export { planLora, LORA_FILE, type LoraOptions, type LoraPlan } from './lora.js';
export { architectureId, autoV2, modelspecMetadata, needsV2Yaml, v2VPredictionYaml, type Architecture, type ModelFacts, type PredictionType } from './metadata.js';
export { buildHeader, DTYPE_SIZES, isDType, MAX_HEADER_BYTES, numel, orderForAlignment, parseHeader, readHeader, type DType, type SafetensorsFile, type TensorInfo, type TensorSpec } from './safetensors.js';
export { floatDType, makePlan, OUTPUT_DTYPES, planChunks, writePlanToFile, writePlanToStore, type OutputDType, type PlannedTensor, type WritePlan, type WriteResult } from './writer.js';
