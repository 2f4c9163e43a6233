/** Schemas and helpers shared by the route modules. */
import { z } from 'zod';
import { SESSION_NAME_PATTERN } from '../../sessions/manifest.js';

/** Session name in a path. */
export const nameParam = z.object({ name: z.string().regex(SESSION_NAME_PATTERN, 'a session name: 1–64 letters, digits, ".", "_" or "-"') });

/** The API path of a session. */
export const sessionPathFor = (name: string): string => `/api/sessions/${encodeURIComponent(name)}`;
