// Reading our DICOMweb: QIDO-RS lists, WADO-RS metadata, raw frames and bulk data.
// Same origin: the session cookie authenticates every request.

export const RAW_FRAME_ACCEPT =
  'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';
const JSON_ACCEPT = "application/dicom+json";

async function checked(response) {
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}: ${response.url}`);
  return response;
}

export async function getJSON(url) {
  const response = await checked(await fetch(url, { headers: { Accept: JSON_ACCEPT }, credentials: "same-origin" }));
  return response.status === 204 ? [] : response.json();
}

// The first part's body of a multipart/related answer, as its own ArrayBuffer (aligned
// for typed arrays).
export function firstPart(buffer, contentType) {
  const bytes = new Uint8Array(buffer);
  const match = /boundary="?([^";]+)"?/i.exec(contentType || "");
  if (!match) return buffer.slice(0); // not multipart: the body is the value
  const boundary = new TextEncoder().encode("--" + match[1]);
  const start = indexOf(bytes, boundary, 0);
  if (start < 0) throw new Error("multipart answer without its boundary");
  const headersEnd = indexOf(bytes, new Uint8Array([13, 10, 13, 10]), start);
  if (headersEnd < 0) throw new Error("multipart part without headers");
  const bodyStart = headersEnd + 4;
  const delimiter = new Uint8Array(boundary.length + 2);
  delimiter.set([13, 10]);
  delimiter.set(boundary, 2);
  const end = indexOf(bytes, delimiter, bodyStart);
  return buffer.slice(bodyStart, end < 0 ? bytes.length : end);
}

function indexOf(haystack, needle, from) {
  const first = needle[0];
  const last = haystack.length - needle.length;
  outer: for (let i = haystack.indexOf(first, from); i !== -1 && i <= last; i = haystack.indexOf(first, i + 1)) {
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

export async function getFrame(url, signal) {
  const response = await checked(await fetch(url, { headers: { Accept: RAW_FRAME_ACCEPT }, credentials: "same-origin", signal }));
  return firstPart(await response.arrayBuffer(), response.headers.get("Content-Type"));
}

export async function getBulk(url) {
  const accept = 'multipart/related; type="application/octet-stream"';
  const response = await checked(await fetch(url, { headers: { Accept: accept }, credentials: "same-origin" }));
  return firstPart(await response.arrayBuffer(), response.headers.get("Content-Type"));
}

// --- dicom+json values -----------------------------------------------------------------

export function element(item, tag) {
  return item ? item[tag] : undefined;
}

export function values(item, tag) {
  const e = element(item, tag);
  return e && Array.isArray(e.Value) ? e.Value : [];
}

export function first(item, tag, fallback = undefined) {
  const v = values(item, tag);
  return v.length ? v[0] : fallback;
}

export function number(item, tag, fallback = undefined) {
  const v = first(item, tag);
  const n = typeof v === "number" ? v : parseFloat(v);
  return Number.isFinite(n) ? n : fallback;
}

export function numbers(item, tag) {
  return values(item, tag).map((v) => (typeof v === "number" ? v : parseFloat(v))).filter(Number.isFinite);
}

export function text(item, tag) {
  return values(item, tag).map(personOrText).join("\\");
}

// A person name as a Chinese department writes it: characters first, the Latin
// spelling beside them when both were sent.
export function personOrText(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "object") return String(v);
  const names = [v.Ideographic, v.Alphabetic, v.Phonetic].filter(Boolean).map((n) => n.replace(/\^+/g, " ").trim());
  if (!names.length) return "";
  return names.length > 1 ? `${names[0]} (${names.slice(1).join(", ")})` : names[0];
}

// Bytes of a binary value: inline (base64) or fetched from its BulkDataURI.
export async function binary(item, tag) {
  const e = element(item, tag);
  if (!e) return null;
  if (e.InlineBinary) {
    const raw = atob(e.InlineBinary);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out.buffer;
  }
  if (e.BulkDataURI) return getBulk(e.BulkDataURI);
  if (Array.isArray(e.Value)) return new Uint16Array(e.Value).buffer; // US/SS given as numbers
  return null;
}
