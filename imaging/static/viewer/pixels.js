// From a raw little-endian frame and its instance's dicom+json to pixels on a canvas.
//
// Grayscale keeps the stored values; every render maps them through one lookup table
// (modality LUT: rescale slope/intercept, then the VOI window, then MONOCHROME1 and
// invert), so that window/level works on the real values, never on an 8-bit picture.

import { binary, number, numbers, first } from "./dicomweb.js";

const NATIVE = new Set(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]);

// The attributes that describe a frame's pixels (PS3.3 C.7.6.3), from one instance.
export function pixelModule(item) {
  const shared = first(item, "52009229"); // Shared Functional Groups (enhanced multi-frame)
  const measures = shared ? first(shared, "00289110") : undefined;
  const transform = shared ? first(shared, "00289145") : undefined;
  const spacing = numbers(item, "00280030");
  const imager = numbers(item, "00181164");
  return {
    rows: number(item, "00280010", 0),
    columns: number(item, "00280011", 0),
    samples: number(item, "00280002", 1),
    bitsAllocated: number(item, "00280100", 16),
    bitsStored: number(item, "00280101", number(item, "00280100", 16)),
    signed: number(item, "00280103", 0) === 1,
    planar: number(item, "00280006", 0) === 1,
    photometric: String(first(item, "00280004", "MONOCHROME2")).trim(),
    slope: number(item, "00281053", transform ? number(transform, "00281053", 1) : 1),
    intercept: number(item, "00281052", transform ? number(transform, "00281052", 0) : 0),
    windowCenter: number(item, "00281050"),
    windowWidth: number(item, "00281051"),
    spacing: spacing.length === 2 ? spacing : imager.length === 2 ? imager : measures ? numbers(measures, "00280030") : [],
    // Frames of a compressed (or big endian, or deflated) file are decoded by the server:
    // interleaved, and YCbCr already turned into RGB.
    serverDecoded: !NATIVE.has(String(first(item, "00020010", "1.2.840.10008.1.2.1"))),
  };
}

export async function paletteOf(item) {
  const lut = {};
  const tags = [["red", "00281101", "00281201", "00281221"], ["green", "00281102", "00281202", "00281222"], ["blue", "00281103", "00281203", "00281223"]];
  for (const [color, desc, data, segmented] of tags) {
    const [entries, firstMapped] = numbers(item, desc);
    const count = entries || 65536;
    let table;
    const plain = await binary(item, data);
    if (plain) {
      table = plain.byteLength >= 2 * count ? new Uint16Array(plain, 0, count) : new Uint8Array(plain, 0, Math.min(count, plain.byteLength));
    } else {
      const words = await binary(item, segmented);
      if (!words) throw new Error("palette color image without its lookup table data");
      table = expandSegmented(new Uint16Array(words, 0, words.byteLength >> 1));
    }
    // Declared 16 bits but holding 8-bit values happens, and the reverse: the values tell.
    let max = 0;
    for (let i = 0; i < table.length; i++) if (table[i] > max) max = table[i];
    const out = new Uint8Array(table.length);
    const scale = max > 255 ? 255 / 65535 : 1;
    for (let i = 0; i < table.length; i++) out[i] = Math.round(table[i] * scale);
    lut[color] = { table: out, first: firstMapped || 0 };
  }
  return lut;
}

// Segmented palette data (PS3.3 C.7.9.2): discrete, linear and indirect segments.
export function expandSegmented(words) {
  const out = [];
  const run = (start, limit) => {
    let i = start;
    for (let segment = 0; i < words.length && segment < limit; segment++) {
      const op = words[i];
      const length = words[i + 1];
      if (op === 0) {
        for (let k = 0; k < length; k++) out.push(words[i + 2 + k]);
        i += 2 + length;
      } else if (op === 1) {
        const y0 = out.length ? out[out.length - 1] : 0;
        const y1 = words[i + 2];
        for (let k = 1; k <= length; k++) out.push(Math.round(y0 + ((y1 - y0) * k) / length));
        i += 3;
      } else if (op === 2) {
        const offset = words[i + 2] | (words[i + 3] << 16);
        run(offset, length);
        i += 4;
      } else {
        throw new Error(`segmented palette: unknown segment type ${op}`);
      }
    }
  };
  run(0, Infinity);
  return Uint16Array.from(out);
}

function typed(buffer, module) {
  const { bitsAllocated, signed } = module;
  if (bitsAllocated === 8) return signed ? new Int8Array(buffer) : new Uint8Array(buffer);
  if (bitsAllocated === 16) return signed ? new Int16Array(buffer, 0, buffer.byteLength >> 1) : new Uint16Array(buffer, 0, buffer.byteLength >> 1);
  if (bitsAllocated === 32) return signed ? new Int32Array(buffer, 0, buffer.byteLength >> 2) : new Uint32Array(buffer, 0, buffer.byteLength >> 2);
  throw new Error(`${bitsAllocated} bits allocated: not supported`);
}

// A decoded frame, ready to be rendered any number of times.
export class Frame {
  constructor(buffer, module, palette = null) {
    this.module = module;
    this.width = module.columns;
    this.height = module.rows;
    const photometric = module.photometric;
    this.color = module.samples === 3 || photometric === "PALETTE COLOR";
    this.palette = palette;
    let data = typed(buffer, module);
    const n = this.width * this.height;
    if (module.samples === 1) {
      data = data.subarray(0, n);
      // Values outside Bits Stored: mask (unsigned) or sign-extend (signed), on a copy.
      const bits = module.bitsStored;
      if (bits < module.bitsAllocated && bits < 32) {
        let { min, max } = extremes(data);
        const limitHigh = module.signed ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
        const limitLow = module.signed ? -(2 ** (bits - 1)) : 0;
        if (max > limitHigh || min < limitLow) {
          const copy = new Int32Array(n);
          const shift = 32 - bits;
          for (let i = 0; i < n; i++) copy[i] = module.signed ? (data[i] << shift) >> shift : data[i] & limitHigh;
          data = copy;
        }
      }
      this.stored = data;
      const { min, max } = extremes(data);
      this.min = min;
      this.max = max;
    } else {
      // YBR_FULL_422 frames the server could not send as stored come decoded, at full size, as RGB.
      if (module.photometric === "YBR_FULL_422" && !module.serverDecoded && data.length >= 3 * n) {
        this.module = { ...module, serverDecoded: true };
      }
      this.stored = data;
    }
  }

  modality(v) {
    return v * this.module.slope + this.module.intercept;
  }

  // The window the file suggests, else one that spans the values.
  defaultWindow() {
    const { windowCenter, windowWidth } = this.module;
    if (Number.isFinite(windowCenter) && Number.isFinite(windowWidth) && windowWidth > 0) return { center: windowCenter, width: windowWidth };
    const low = this.modality(this.min);
    const high = this.modality(this.max);
    const [a, b] = low <= high ? [low, high] : [high, low];
    return { center: (a + b) / 2, width: Math.max(1, b - a) };
  }

  valueAt(x, y) {
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return null;
    const i = y * this.width + x;
    if (this.module.samples === 1 && !this.palette) return this.modality(this.stored[i]);
    return null;
  }

  // Into ``imageData`` (width x height), with {center, width, invert}.
  render(imageData, { center, width, invert }) {
    const out = new Uint32Array(imageData.data.buffer);
    const n = this.width * this.height;
    if (this.palette) return this.renderPalette(out, n, invert);
    if (this.module.samples === 3) return this.renderColor(out, n, invert);
    const mono1 = this.module.photometric === "MONOCHROME1";
    const flip = mono1 !== Boolean(invert);
    const { slope, intercept } = this.module;
    // PS3.3 C.11.2.1.2.1, linear function.
    const c = center - 0.5;
    const w = Math.max(1, width) - 1;
    const toByte = (v) => {
      const m = v * slope + intercept;
      let y = w <= 0 ? (m <= c ? 0 : 255) : ((m - c) / w + 0.5) * 255;
      y = y < 0 ? 0 : y > 255 ? 255 : Math.round(y);
      return flip ? 255 - y : y;
    };
    const span = this.max - this.min + 1;
    const data = this.stored;
    if (span <= 1 << 20) {
      const lut = new Uint32Array(span);
      for (let i = 0; i < span; i++) {
        const y = toByte(this.min + i);
        lut[i] = 0xff000000 | (y << 16) | (y << 8) | y;
      }
      const offset = this.min;
      for (let i = 0; i < n; i++) out[i] = lut[data[i] - offset];
    } else {
      for (let i = 0; i < n; i++) {
        const y = toByte(data[i]);
        out[i] = 0xff000000 | (y << 16) | (y << 8) | y;
      }
    }
  }

  renderPalette(out, n, invert) {
    const { red, green, blue } = this.palette;
    const data = this.stored;
    const look = (lut, v) => {
      let i = v - lut.first;
      if (i < 0) i = 0;
      else if (i >= lut.table.length) i = lut.table.length - 1;
      return lut.table[i];
    };
    for (let i = 0; i < n; i++) {
      const v = data[i];
      let r = look(red, v), g = look(green, v), b = look(blue, v);
      if (invert) { r = 255 - r; g = 255 - g; b = 255 - b; }
      out[i] = 0xff000000 | (b << 16) | (g << 8) | r;
    }
  }

  renderColor(out, n, invert) {
    const m = this.module;
    const data = this.stored;
    const planar = m.planar && !m.serverDecoded;
    const ybr = !m.serverDecoded && (m.photometric === "YBR_FULL" || m.photometric === "YBR_FULL_422");
    const sub422 = !m.serverDecoded && m.photometric === "YBR_FULL_422";
    const shift = m.bitsAllocated > 8 ? Math.max(0, m.bitsStored - 8) : 0;
    const clamp = (v) => (v < 0 ? 0 : v > 255 ? 255 : Math.round(v));
    for (let i = 0; i < n; i++) {
      let a, b, c;
      if (sub422) {
        // Two pixels share one Cb Cr: Y0 Y1 Cb Cr.
        const pair = (i >> 1) * 4;
        a = data[pair + (i & 1)];
        b = data[pair + 2];
        c = data[pair + 3];
      } else if (planar) {
        a = data[i]; b = data[n + i]; c = data[2 * n + i];
      } else {
        a = data[3 * i]; b = data[3 * i + 1]; c = data[3 * i + 2];
      }
      a >>= shift; b >>= shift; c >>= shift;
      let r = a, g = b, bl = c;
      if (ybr) {
        r = clamp(a + 1.402 * (c - 128));
        g = clamp(a - 0.344136 * (b - 128) - 0.714136 * (c - 128));
        bl = clamp(a + 1.772 * (b - 128));
      }
      if (invert) { r = 255 - r; g = 255 - g; bl = 255 - bl; }
      out[i] = 0xff000000 | (bl << 16) | (g << 8) | r;
    }
  }
}

function extremes(data) {
  let min = Infinity, max = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (min === Infinity) min = max = 0;
  return { min, max };
}
