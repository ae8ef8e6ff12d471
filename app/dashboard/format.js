/* tapestream dashboard: how numbers and times are shown. Prices and times arrive in the API's
 * default units (decimal numbers, ISO 8601 strings in UTC) and are shown as they come. */

export function fmtPrice(v) {
  if (v === null || v === undefined) return "–";
  const s = String(v);
  if (s.includes("e")) return v.toFixed(9).replace(/0+$/, "");
  const dot = s.indexOf(".");
  return dot < 0 || s.length - dot - 1 < 2 ? v.toFixed(2) : s;
}

// A derived price (a VWAP, a band): four decimals say enough, data-value keeps them all.
export function fmtDerived(v) {
  return v === null || v === undefined ? "–" : fmtPrice(Number(v.toFixed(4)));
}

export function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(3);
}

export function fmtInt(v) {
  return v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US");
}

// "2023-11-14T22:13:09.123456789Z" -> "11-14 22:13:09": read off the string, already UTC.
export function fmtTime(iso, seconds = true) {
  if (typeof iso !== "string") return "–";
  return iso.slice(5, seconds ? 19 : 16).replace("T", " ");
}

// Date.parse is only sure of milliseconds: the nanoseconds are cut first.
export function timeMs(iso) {
  return typeof iso === "string" ? Date.parse(iso.replace(/(\.\d{3})\d+/, "$1")) : NaN;
}

export function setValue(el, value, text) {
  el.textContent = text;
  el.dataset.value = value === null || value === undefined ? "" : String(value);
}
