// The whole series in one WADO-RS retrieve, read as it streams in: each part (a DICOM
// file, native little endian: the server transcodes compressed files) hands its pixel
// data to ``onPixels`` as soon as the part is complete.
//
// One request instead of one per frame: the server streams files from disk (about
// 1 ms per 512x512 slice) instead of answering 300 requests (about 15 ms each).

const IMPLICIT = "1.2.840.10008.1.2";
// Implicit VR Little Endian files go as stored (no transcoding needed to read them
// here), everything else as Explicit VR Little Endian.
export const SERIES_ACCEPT =
  'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2, ' +
  'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1';
const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"]);
const UNDEFINED = 0xffffffff;

export async function streamSeries(url, signal, onPixels) {
  const response = await fetch(url, { headers: { Accept: SERIES_ACCEPT }, credentials: "same-origin", signal });
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}: ${url}`);
  const match = /boundary="?([^";]+)"?/i.exec(response.headers.get("Content-Type") || "");
  if (!match) throw new Error("series retrieve: not multipart");
  const delimiter = new TextEncoder().encode("\r\n--" + match[1]);
  const reader = response.body.getReader();
  // The body opens with "--boundary": a CRLF in front makes every delimiter alike.
  let buffer = new Uint8Array(4 << 20);
  buffer.set([13, 10]);
  let length = 2;
  let scan = 0;
  let started = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (length + value.length > buffer.length) {
      const bigger = new Uint8Array(Math.max(buffer.length * 2, length + value.length));
      bigger.set(buffer.subarray(0, length));
      buffer = bigger;
    }
    buffer.set(value, length);
    length += value.length;
    for (;;) {
      const at = indexOf(buffer, delimiter, scan, length);
      if (at < 0) {
        scan = Math.max(0, length - delimiter.length);
        break;
      }
      if (started) part(buffer.subarray(0, at), onPixels);
      started = true;
      const rest = at + delimiter.length;
      buffer.copyWithin(0, rest, length);
      length -= rest;
      scan = 0;
    }
  }
}

function part(bytes, onPixels) {
  const headersEnd = indexOf(bytes, new Uint8Array([13, 10, 13, 10]), 0, bytes.length);
  if (headersEnd < 0) return;
  const headers = new TextDecoder().decode(bytes.subarray(0, headersEnd));
  const location = /Content-Location:\s*(\S+)/i.exec(headers);
  const file = bytes.subarray(headersEnd + 4);
  const found = pixelData(file);
  if (!found || !location) return;
  const sop = decodeURIComponent(location[1].split("/").pop());
  onPixels(sop, file.slice(found.offset, found.offset + found.length).buffer);
}

// Where the (native) Pixel Data value of a DICOM file is: {offset, length}, or null.
export function pixelData(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dicm = bytes[128] === 68 && bytes[129] === 73 && bytes[130] === 67 && bytes[131] === 77;
  let p = dicm ? 132 : 0;
  let syntax = "1.2.840.10008.1.2.1";
  while (p + 8 <= bytes.length && view.getUint16(p, true) === 0x0002) {
    const e = element(view, bytes, p, true);
    if (e.tag === 0x00020010) syntax = new TextDecoder().decode(bytes.subarray(e.value, e.value + e.length)).replace(/[\0 ]+$/, "");
    p = e.value + e.length;
  }
  const explicit = syntax !== IMPLICIT;
  while (p + 8 <= bytes.length) {
    const e = element(view, bytes, p, explicit);
    if (e.tag === 0x7fe00010) return e.length === UNDEFINED ? null : { offset: e.value, length: e.length };
    p = e.length === UNDEFINED ? skipUndefined(view, bytes, e.value, explicit && e.vr !== "UN") : e.value + e.length;
  }
  return null;
}

function element(view, bytes, p, explicit) {
  const tag = ((view.getUint16(p, true) << 16) | view.getUint16(p + 2, true)) >>> 0;
  // Items and delimiters have no VR, whatever the transfer syntax.
  if (!explicit || (tag >>> 16) === 0xfffe) return { tag, vr: "", length: view.getUint32(p + 4, true), value: p + 8 };
  const vr = String.fromCharCode(bytes[p + 4], bytes[p + 5]);
  if (LONG_VRS.has(vr)) return { tag, vr, length: view.getUint32(p + 8, true), value: p + 12 };
  return { tag, vr, length: view.getUint16(p + 6, true), value: p + 8 };
}

// Past a value of undefined length (a sequence, or encapsulated data): its items, to the delimiter.
function skipUndefined(view, bytes, p, explicit) {
  while (p + 8 <= bytes.length) {
    const tag = ((view.getUint16(p, true) << 16) | view.getUint16(p + 2, true)) >>> 0;
    const length = view.getUint32(p + 4, true);
    p += 8;
    if (tag === 0xfffee0dd) return p; // sequence delimiter
    if (tag !== 0xfffee000) throw new Error("series retrieve: malformed sequence");
    if (length !== UNDEFINED) {
      p += length;
      continue;
    }
    // An item of undefined length: its elements up to the item delimiter.
    for (;;) {
      const e = element(view, bytes, p, explicit);
      if (e.tag === 0xfffee00d) {
        p = e.value;
        break;
      }
      p = e.length === UNDEFINED ? skipUndefined(view, bytes, e.value, explicit && e.vr !== "UN") : e.value + e.length;
    }
  }
  return p;
}

function indexOf(buffer, needle, from, end) {
  const haystack = buffer.subarray(0, end);
  const first = needle[0];
  const last = end - needle.length;
  outer: for (let i = haystack.indexOf(first, from); i !== -1 && i <= last; i = haystack.indexOf(first, i + 1)) {
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
