/**
 * Who is the subject? Given the faces of every photo in a session, this module groups the faces
 * into identities by their 128-d descriptors and names the subject: the identity present in the
 * most photos. It answers, for each photo, which face is the subject's (so that a group photo is
 * cropped on the subject, not on whoever is largest) or why none is (no face at all, or only
 * other people), and keeps the clusters for review. Grouping is agglomerative clustering with
 * average linkage (UPGMA) on Euclidean distance, with one hard rule: two faces of the same photo
 * are never the same identity, so a cluster counts photos, not faces. Average linkage, unlike
 * single linkage, does not chain two different people together through one in-between face.
 * Pure and synchronous: no I/O, deterministic for a given input order.
 */
import { BoothError } from '../errors.js';
import type { DetectedFace } from './types.js';

/**
 * Default merge threshold on the AVERAGE Euclidean distance between two groups of descriptors.
 *
 * face-api (after dlib's `face_recognition`) treats two descriptors closer than 0.6 as the same
 * person. Measured with this repository's detector (SSD MobileNet v1, 68-point landmarks,
 * dlib-aligned 150 px crops from a 1024 px copy):
 * - same person (person-a, 3 photos, 3 pairs): 0.339, 0.450, 0.463;
 * - person-a against every other face (person-b and the 22 faces of face-api's demo photos,
 *   69 pairs): min 0.715, 5th percentile 0.786, median 0.888; person-a vs person-b 0.794–0.872;
 * - different people standing in the SAME demo photo (31 pairs, hard negatives: young women with
 *   similar make-up, tilted or half-hidden faces): min 0.458, then 0.554, 0.564, 0.567, 0.613,
 *   median 0.667. At 0.6, 4 of those 31 pairs would pass as one person; at 0.55, 1.
 * 0.55 keeps a 0.09 margin above the largest same-person distance measured and halves the
 * hard-negative overlap of 0.6 (4 → 1 of 31). Too strict costs a subject photo (flagged for
 * review); too loose trains someone else as the subject, which is the worse mistake. The linkage
 * averages over all pairs, so one unusually close stranger-pair rarely merges two identities.
 */
export const DEFAULT_IDENTITY_THRESHOLD = 0.55;

/** The parts of a detected face identity needs. */
export type IdentityFace = Pick<DetectedFace, 'box' | 'score' | 'descriptor'>;

/** One photo's faces, as the detector returned them (indices are kept). */
export interface IdentityPhoto {
  /** Any unique key (a sha256, a file name). */
  id: string;
  faces: readonly IdentityFace[];
}

/** Options of {@link resolveIdentities}. */
export interface IdentityOptions {
  /** Largest average descriptor distance at which two groups merge. Default {@link DEFAULT_IDENTITY_THRESHOLD}. */
  threshold?: number;
}

/** One face's place in a cluster. */
export interface ClusterMember {
  /** Photo id. */
  photo: string;
  /** Index into that photo's `faces`. */
  face: number;
  /** Euclidean distance of this face's descriptor to the cluster centroid. */
  distance: number;
}

/** One identity found in the session. */
export interface IdentityCluster {
  /** Faces, at most one per photo, in input order. */
  members: ClusterMember[];
  /** Number of photos this identity appears in (equals `members.length`). */
  photos: number;
  /** Mean descriptor. */
  centroid: Float32Array;
  /** Mean detection score of the members. */
  meanScore: number;
  /**
   * Mean relative prominence in [0, 1]: per member, its box area × score divided by the largest
   * box area × score in its photo (1 = the most prominent face there). Resolution-independent.
   */
  prominence: number;
  /** Largest member distance to the centroid (how tight the cluster is). */
  spread: number;
}

/** Why a photo has no subject face. */
export type SubjectAbsence = 'no-face' | 'other-identities';

/** The identity verdict for one photo. */
export interface PhotoIdentity {
  id: string;
  /** Index into the photo's `faces` of the subject's face, or null when the subject is absent. */
  subjectFace: number | null;
  /**
   * With a subject face: its distance to the subject centroid. Without one but with faces: the
   * distance of the NEAREST face to the subject centroid (how far the closest candidate was).
   * Null when there is no subject identity or no face.
   */
  distance: number | null;
  /** How `subjectFace` was chosen: by identity, or by prominence when no identity could be named. */
  basis: 'identity' | 'prominence' | null;
  /** Why the subject is absent; null when present. */
  absence: SubjectAbsence | null;
  /** Human text for the review: why absent, or why the face was chosen without identity; else null. */
  reason: string | null;
  /** For each face of the photo, the index of its cluster in {@link IdentityResult.clusters}. */
  faceClusters: number[];
}

/** The outcome of {@link resolveIdentities}. */
export interface IdentityResult {
  /**
   * Index into `clusters` of the subject, or null when there is no face at all or when no
   * identity appears in more than one photo of a multi-photo session (see `ambiguous`).
   */
  subject: number | null;
  /**
   * True when the subject could not be told apart: another identity is present in as many photos
   * (the tie was broken by prominence, then detection score), or no identity recurs across
   * photos (then every photo falls back to its most prominent face, `basis: 'prominence'`).
   * A caller should flag the session for review.
   */
  ambiguous: boolean;
  /** Why `ambiguous` is true, for a person; null otherwise. */
  ambiguity: string | null;
  /** The threshold used. */
  threshold: number;
  /** Identities, subject candidates first: most photos, then prominence, score, first appearance. */
  clusters: IdentityCluster[];
  /** Per photo, keyed by id, in input order. */
  photos: Map<string, PhotoIdentity>;
}

/**
 * How prominent a face is: box area × detection score. Large, confident faces win; a large but
 * doubtful detection (a poster, a pattern) loses to a clear one.
 *
 * @param face - a detected face
 * @returns area in square pixels times score
 */
export function prominence(face: Pick<DetectedFace, 'box' | 'score'>): number {
  return Math.max(0, face.box.width) * Math.max(0, face.box.height) * face.score;
}

/**
 * The most prominent face of a photo (largest box area × score): the subject when identity
 * matching is off, or for a photo seen alone.
 *
 * @param faces - the photo's faces
 * @returns index into `faces`, or null when there is none; the first wins a tie
 * @example
 * const i = largestFace(faces);
 * const face = i === null ? null : faces[i];
 */
export function largestFace(faces: readonly Pick<DetectedFace, 'box' | 'score'>[]): number | null {
  let best: number | null = null;
  let bestValue = -Infinity;
  for (let i = 0; i < faces.length; i++) {
    const v = prominence(faces[i]!);
    if (v > bestValue) {
      best = i;
      bestValue = v;
    }
  }
  return best;
}

/**
 * Euclidean distance between two face descriptors, face-api's measure of identity.
 *
 * @param a - descriptor
 * @param b - descriptor of the same length
 * @returns the distance (0 for identical descriptors)
 * @throws {BoothError} `INVALID_ARGUMENT` when the lengths differ
 * @example
 * if (descriptorDistance(f1.descriptor, f2.descriptor) < DEFAULT_IDENTITY_THRESHOLD) { … }
 */
export function descriptorDistance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) {
    throw new BoothError('INVALID_ARGUMENT', `descriptors differ in length: ${a.length} and ${b.length}`);
  }
  let s = 0;
  for (let k = 0; k < a.length; k++) {
    const d = (a[k] ?? 0) - (b[k] ?? 0);
    s += d * d;
  }
  return Math.sqrt(s);
}

/** A face with its place in the input. */
interface Node {
  photo: number;
  face: number;
  descriptor: Float32Array;
  score: number;
  relProminence: number;
}

/**
 * Average-linkage agglomerative clustering with a cannot-link rule for faces of the same photo.
 * Distances between clusters are kept in a matrix updated with the Lance–Williams formula for
 * average linkage, d(k, i∪j) = (|i|·d(k,i) + |j|·d(k,j)) / (|i| + |j|). O(n³) time, O(n²) memory
 * in the number of faces: 500 faces (250 photos) took 1.4 s on a busy 2-core machine, far more
 * faces than a DreamBooth session (10–50 photos) holds.
 */
function cluster(nodes: Node[], threshold: number): number[][] {
  const n = nodes.length;
  const dist = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const d = descriptorDistance(nodes[i]!.descriptor, nodes[j]!.descriptor);
      dist[i * n + j] = d;
      dist[j * n + i] = d;
    }
  }
  const members: (number[] | null)[] = nodes.map((_, i) => [i]);
  const photos: (Set<number> | null)[] = nodes.map((node) => new Set([node.photo]));
  for (;;) {
    let bi = -1;
    let bj = -1;
    let best = Infinity;
    for (let i = 0; i < n; i++) {
      const pi = photos[i];
      if (!pi) continue;
      for (let j = i + 1; j < n; j++) {
        const pj = photos[j];
        if (!pj) continue;
        const d = dist[i * n + j]!;
        // Strict `<` keeps the lowest (i, j) on ties, so the result depends only on input order.
        if (d <= threshold && d < best && disjoint(pi, pj)) {
          best = d;
          bi = i;
          bj = j;
        }
      }
    }
    if (bi < 0) break;
    const mi = members[bi]!;
    const mj = members[bj]!;
    const si = mi.length;
    const sj = mj.length;
    for (let k = 0; k < n; k++) {
      if (!members[k] || k === bi || k === bj) continue;
      const d = (si * dist[k * n + bi]! + sj * dist[k * n + bj]!) / (si + sj);
      dist[k * n + bi] = d;
      dist[bi * n + k] = d;
    }
    mi.push(...mj);
    for (const p of photos[bj]!) photos[bi]!.add(p);
    members[bj] = null;
    photos[bj] = null;
  }
  return members.filter((m): m is number[] => m !== null).map((m) => m.sort((a, b) => a - b));
}

function disjoint(a: Set<number>, b: Set<number>): boolean {
  const [small, large] = a.size <= b.size ? [a, b] : [b, a];
  for (const x of small) if (large.has(x)) return false;
  return true;
}

function mean(values: number[]): number {
  return values.length === 0 ? 0 : values.reduce((s, v) => s + v, 0) / values.length;
}

function round3(x: number): string {
  return x.toFixed(3);
}

/**
 * Find the subject across a session's photos.
 *
 * Rules, in order:
 * - faces cluster into identities (average linkage ≤ `threshold`, never two faces of one photo);
 * - the subject is the identity present in the most photos; a tie goes to the higher mean
 *   relative prominence (usually the main person of each photo), then the higher mean detection
 *   score, then the earlier first appearance, and sets `ambiguous`;
 * - a single photo (or a session where only one photo has faces): the subject is its most
 *   prominent face; `ambiguous` when that photo holds more than one face;
 * - no identity in more than one photo although several photos have faces: nobody can be named.
 *   `subject` is null, `ambiguous` is true, and each photo falls back to its most prominent face
 *   (`basis: 'prominence'`), which is what identity `off` would do, so the caller can flag the
 *   session instead of excluding every photo;
 * - a photo without the subject gets `subjectFace: null` and `absence` `no-face` or
 *   `other-identities`.
 *
 * @param photos - each photo's id and faces (with descriptors), in session order
 * @param options - `threshold`, see {@link DEFAULT_IDENTITY_THRESHOLD}
 * @returns the subject, the clusters and a verdict per photo
 * @throws {BoothError} `INVALID_ARGUMENT` for a duplicate photo id, a bad threshold, or
 *   descriptors of different lengths
 * @example
 * const result = resolveIdentities(photos.map((p) => ({ id: p.sha256, faces: p.faces })));
 * for (const [id, verdict] of result.photos) {
 *   if (verdict.subjectFace === null) exclude(id, verdict.reason);
 * }
 * if (result.ambiguous) warn(result.ambiguity);
 */
export function resolveIdentities(photos: readonly IdentityPhoto[], options: IdentityOptions = {}): IdentityResult {
  const threshold = options.threshold ?? DEFAULT_IDENTITY_THRESHOLD;
  if (!(Number.isFinite(threshold) && threshold > 0)) {
    throw new BoothError('INVALID_ARGUMENT', `option threshold must be a positive number, got ${threshold}`);
  }
  const seen = new Set<string>();
  for (const p of photos) {
    if (seen.has(p.id)) throw new BoothError('INVALID_ARGUMENT', `photo id "${p.id}" appears twice; ids must be unique`);
    seen.add(p.id);
  }

  const nodes: Node[] = [];
  let dim: number | null = null;
  photos.forEach((p, photo) => {
    for (const f of p.faces) {
      dim ??= f.descriptor.length;
      if (f.descriptor.length !== dim || dim === 0) {
        throw new BoothError(
          'INVALID_ARGUMENT',
          `photo "${p.id}" has a face descriptor of length ${f.descriptor.length}; expected ${dim || 128} like the others`,
        );
      }
    }
    const top = Math.max(0, ...p.faces.map(prominence));
    p.faces.forEach((f, face) => {
      nodes.push({ photo, face, descriptor: f.descriptor, score: f.score, relProminence: top > 0 ? prominence(f) / top : 1 });
    });
  });

  const clusters: IdentityCluster[] = cluster(nodes, threshold)
    .map((ids) => {
      const ms = ids.map((i) => nodes[i]!);
      const dim = ms[0]!.descriptor.length;
      const centroid = new Float32Array(dim);
      for (const m of ms) for (let k = 0; k < dim; k++) centroid[k]! += m.descriptor[k]! / ms.length;
      const members = ms.map((m) => ({ photo: photos[m.photo]!.id, face: m.face, distance: descriptorDistance(m.descriptor, centroid) }));
      return {
        first: ids[0]!,
        value: {
          members,
          photos: members.length,
          centroid,
          meanScore: mean(ms.map((m) => m.score)),
          prominence: mean(ms.map((m) => m.relProminence)),
          spread: Math.max(...members.map((m) => m.distance)),
        },
      };
    })
    .sort(
      (a, b) =>
        b.value.photos - a.value.photos ||
        b.value.prominence - a.value.prominence ||
        b.value.meanScore - a.value.meanScore ||
        a.first - b.first,
    )
    .map((c) => c.value);

  // face → cluster index, per photo.
  const indexOf = new Map(photos.map((p, i) => [p.id, i]));
  const faceClusters = photos.map((p) => new Array<number>(p.faces.length).fill(-1));
  clusters.forEach((c, ci) => {
    for (const m of c.members) faceClusters[indexOf.get(m.photo)!]![m.face] = ci;
  });

  const photosWithFaces = photos.filter((p) => p.faces.length > 0).length;
  const top = clusters[0];
  const runnerUp = clusters[1];
  const result: IdentityResult = { subject: null, ambiguous: false, ambiguity: null, threshold, clusters, photos: new Map() };

  const noFace = (p: IdentityPhoto, i: number): PhotoIdentity => ({
    id: p.id,
    subjectFace: null,
    distance: null,
    basis: null,
    absence: 'no-face',
    reason: 'no face was found',
    faceClusters: faceClusters[i]!,
  });

  if (!top) {
    photos.forEach((p, i) => result.photos.set(p.id, noFace(p, i)));
    return result;
  }

  if (top.photos === 1 && photosWithFaces > 1) {
    result.ambiguous = true;
    result.ambiguity =
      `no face recurs across the ${photosWithFaces} photos with faces (threshold ${threshold}); ` +
      'the subject cannot be named, so each photo uses its most prominent face';
    photos.forEach((p, i) => {
      const idx = largestFace(p.faces);
      if (idx === null) {
        result.photos.set(p.id, noFace(p, i));
        return;
      }
      result.photos.set(p.id, {
        id: p.id,
        subjectFace: idx,
        distance: null,
        basis: 'prominence',
        absence: null,
        reason: 'no identity recurs across photos; the most prominent face was taken',
        faceClusters: faceClusters[i]!,
      });
    });
    return result;
  }

  result.subject = 0;
  if (runnerUp && runnerUp.photos === top.photos) {
    result.ambiguous = true;
    result.ambiguity =
      top.photos === 1
        ? 'only one photo has faces and it holds several people; the most prominent face was taken as the subject'
        : `two identities appear in ${top.photos} photos each; the one with the more prominent faces was taken as the subject`;
  }
  photos.forEach((p, i) => {
    if (p.faces.length === 0) {
      result.photos.set(p.id, noFace(p, i));
      return;
    }
    const fc = faceClusters[i]!;
    const idx = fc.indexOf(0);
    if (idx >= 0) {
      const member = top.members.find((m) => m.photo === p.id);
      result.photos.set(p.id, {
        id: p.id,
        subjectFace: idx,
        distance: member?.distance ?? null,
        basis: 'identity',
        absence: null,
        reason: null,
        faceClusters: fc,
      });
      return;
    }
    const nearest = Math.min(...p.faces.map((f) => descriptorDistance(f.descriptor, top.centroid)));
    result.photos.set(p.id, {
      id: p.id,
      subjectFace: null,
      distance: nearest,
      basis: null,
      absence: 'other-identities',
      reason:
        `the subject is not in this photo: ${p.faces.length === 1 ? 'its face belongs' : `its ${p.faces.length} faces belong`} ` +
        `to someone else (the nearest is ${round3(nearest)} from the subject's mean descriptor; ` +
        `the subject's own faces are within ${round3(top.spread)})`,
      faceClusters: fc,
    });
  });
  return result;
}
