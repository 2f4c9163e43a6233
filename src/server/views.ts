/**
 * How stored records look to API clients: the photo review view (statuses, flags with their
 * measured values, face boxes, crop, caption, and signed image URLs), the run view (state,
 * progress, samples with URLs) and the session summary. Kept apart from the routes so the SSE
 * stream and the REST routes show a run identically.
 */
import type { PhotoRecord, SessionManifest } from '../sessions/manifest.js';
import type { RunInfo } from '../training/control.js';
import { totalSteps } from '../training/spec.js';
import type { UrlSigner } from './auth.js';

/** URL-safe path prefix of a session. */
export const sessionPath = (name: string): string => `/api/sessions/${encodeURIComponent(name)}`;

/** A session as listed. */
export function sessionSummary(m: SessionManifest) {
  const count = (s: PhotoRecord['status']) => m.photos.filter((p) => p.status === s).length;
  return {
    name: m.name,
    subject: m.subject,
    base: m.base,
    state: m.state,
    settings: m.settings,
    createdAt: m.createdAt,
    updatedAt: m.updatedAt,
    photos: { total: m.photos.length, pending: count('pending'), accepted: count('accepted'), excluded: count('excluded'), rejected: count('rejected') },
    prepared: m.prepared ? { at: m.prepared.at, counts: m.prepared.counts } : null,
  };
}

/** One photo's review data. */
export function photoView(m: SessionManifest, p: PhotoRecord, signer: UrlSigner) {
  const base = `${sessionPath(m.name)}/photos/${p.sha256}`;
  // Signatures are per path; the version parameter busts browser caches when a crop is re-rendered.
  const v = encodeURIComponent(`${p.crop ? `${p.crop.x},${p.crop.y},${p.crop.width}` : 'none'}-${m.updatedAt}`);
  return {
    sha256: p.sha256,
    name: p.name,
    size: p.size,
    status: p.status,
    reason: p.reason,
    flags: p.flags,
    checks: p.checks,
    override: p.override,
    source: p.source,
    warnings: p.warnings,
    faces: p.faces,
    face: p.face,
    crop: p.crop,
    cropOverride: p.cropOverride ?? null,
    cropStrategy: p.cropStrategy,
    framingAchieved: p.framingAchieved,
    upscale: p.upscale,
    caption: p.caption,
    captionSource: p.captionSource,
    captionFlags: p.captionMeta?.flags ?? [],
    captionTokens: p.captionMeta?.tokens ?? null,
    captionError: p.captionError ?? null,
    addedAt: p.addedAt,
    urls: {
      preview: p.key ? signer.sign(`${base}/preview`) : null,
      original: p.key ? signer.sign(`${base}/original`) : null,
      crop: p.datasetKey ? signer.sign(`${base}/crop?v=${v}`) : null,
    },
  };
}

/** A run as the API and the event stream show it. */
export function runView(info: RunInfo, signer: UrlSigner) {
  const { record, status, spec } = info;
  const base = `${sessionPath(record.session)}/runs/${record.run}`;
  return {
    session: record.session,
    run: record.run,
    state: info.state,
    preset: record.preset,
    createdAt: record.createdAt,
    attempt: Math.max(record.launches.at(-1)?.attempt ?? 0, status?.attempt ?? 0),
    launcher: record.launches.at(-1)?.launcher ?? null,
    stopRequestedAt: record.stopRequestedAt,
    extensions: record.extensions,
    step: status?.step ?? 0,
    total: status?.total || totalSteps(spec),
    stage: status?.stage ?? null,
    stageStep: status?.stageStep ?? null,
    stageTotal: status?.stageTotal ?? null,
    loss: status?.loss ?? null,
    lr: status?.lr ?? null,
    itPerS: status?.itPerS ?? null,
    etaS: status?.etaS ?? null,
    vramGb: status?.vramGb ?? null,
    message: status?.message ?? null,
    error: status?.error ?? null,
    lossHistory: status?.lossHistory ?? [],
    resumeStates: status?.resumeStates ?? [],
    model: status?.model ?? null,
    samples: (status?.samples ?? []).map((s) => ({ step: s.step, index: s.index, prompt: s.prompt, url: signer.sign(`${base}/samples/${s.step}/${s.index}.png`) })),
    updatedAt: status?.updatedAt ?? null,
    finishedAt: status?.finishedAt ?? null,
    scheduler: info.scheduler ?? null,
  };
}

/** The run view type. */
export type RunView = ReturnType<typeof runView>;
