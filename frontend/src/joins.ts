// Click-through lists from the join endpoints (`/joins/...`, see the
// README). A server without them answers 404 and the panel says "not
// available". Keep the URLs here, in one place.

export const joinUrls = {
  unitsInHazard: (id: string) => `/joins/hazards/${encodeURIComponent(id)}/units`,
  nearestUnits: (id: string, n = 5) => `/joins/nearest?incident=${encodeURIComponent(id)}&n=${n}`,
};

export interface JoinRow {
  id: string;
  type?: string;
  status?: string;
  distance_m?: number;
}

/** The rows, or `null` when the endpoint does not exist on this server. */
export async function fetchJoin(url: string, headers: HeadersInit): Promise<JoinRow[] | null> {
  let res: Response;
  try {
    res = await fetch(url, { headers: { ...headers, Accept: 'application/geo+json, application/json' } });
  } catch {
    return null;
  }
  if (res.status === 404 || res.status === 405 || res.status === 501) return null;
  if (!res.ok) return null;
  const body = await res.json();
  const list: unknown[] = Array.isArray(body) ? body : (body.features ?? body.units ?? body.items ?? []);
  return list.map((x) => {
    // `/joins/hazards/{id}/units` lists bare ids; `/joins/nearest` objects.
    if (typeof x === 'string') return { id: x };
    const f = x as { id?: unknown; properties?: Record<string, unknown>; [k: string]: unknown };
    const p = f.properties ?? (f as Record<string, unknown>);
    const d = p.distance_m ?? f.distance_m ?? p.distance;
    return {
      id: String(f.id ?? p.id),
      type: p.type as string | undefined,
      status: p.status as string | undefined,
      distance_m: typeof d === 'number' ? d : undefined,
    };
  });
}
