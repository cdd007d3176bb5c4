// Small helpers shared by the pages: formatting, roles, the hash route, the clipboard.
import { h } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import htm from "htm";

/** Tagged templates instead of JSX: no build step. */
export const html = htm.bind(h);

const ROLES = { viewer: 1, operator: 2, admin: 3 };

/** True when `role` may do what `needed` may (viewer < operator < admin). */
export function can(role, needed) {
  return (ROLES[role] || 0) >= ROLES[needed];
}

export function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (x) => String(x).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

export function formatTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function errorText(error) {
  if (!error) return "";
  const reason = error.data?.reason ? `: ${error.data.reason}` : "";
  return error.code ? `${error.message}${reason} (${error.code})` : String(error.message || error);
}

/** The hash route: "#/files?kind=snapshots&offset=100" -> {page: "files", query: {...}}. */
export function parseHash(hash = window.location.hash) {
  const [path, search] = hash.replace(/^#\/?/, "").split("?");
  return { page: path || "cameras", query: Object.fromEntries(new URLSearchParams(search || "")) };
}

export function setHash(page, query = {}) {
  const clean = Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== "");
  const search = new URLSearchParams(clean).toString();
  const next = `#/${page}${search ? `?${search}` : ""}`;
  if (window.location.hash !== next) window.location.hash = next;
}

export function useHash() {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const changed = () => setRoute(parseHash());
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return route;
}

/** Re-render every `ms` while mounted (elapsed-time counters). */
export function useTick(ms, active = true) {
  const [, setN] = useState(0);
  useEffect(() => {
    if (!active) return undefined;
    const t = setInterval(() => setN((n) => n + 1), ms);
    return () => clearInterval(t);
  }, [ms, active]);
}

/** Copy text; falls back to a selected textarea where the Clipboard API is missing (plain http off localhost). */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

/** A short-lived signed URL for a file, or null where the service has no get_download_link. */
export async function signedLink(rpc, kind, filename, expiresIn = 3600) {
  try {
    const link = await rpc.call("get_download_link", { filename, kind, expires_in: expiresIn });
    // Same origin by contract (the API's host and port): keep only path and query, so a
    // configured public host that differs from the one in the address bar still works.
    const url = new URL(link.url, window.location.href);
    return url.pathname + url.search;
  } catch (error) {
    if (error.code === -32601) return null;
    throw error;
  }
}

/**
 * A modal dialog on the native <dialog>: focus moves in and is trapped, Escape
 * closes it, focus returns to the opener. `onClose` runs however it closes.
 */
export function Modal({ title, onClose, children, wide = false }) {
  const ref = useRef(null);
  const titleId = useMemo(() => `dialog-${Math.random().toString(36).slice(2, 9)}`, []);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog.open) dialog.showModal();
    dialog.addEventListener("close", onClose);
    return () => dialog.removeEventListener("close", onClose);
  }, []);
  return html`<dialog ref=${ref} class=${wide ? "modal wide" : "modal"} aria-labelledby=${titleId}>
    <div class="modal-head">
      <h2 id=${titleId}>${title}</h2>
      <button class="icon" aria-label="Close" onClick=${() => ref.current.close()}>×</button>
    </div>
    ${children}
  </dialog>`;
}

/** The service's Prometheus text (GET /metrics, with this session's credentials). */
export async function fetchMetrics(rpc) {
  const response = await fetch("/metrics", { headers: rpc.authHeaders(), cache: "no-store" });
  if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
  return response.text();
}

/** The samples of one metric family in Prometheus text: [{labels: {...}, value}]. */
export function metricSamples(text, name) {
  const found = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(name) || (line[name.length] !== " " && line[name.length] !== "{")) continue;
    const labels = {};
    const braces = /\{(.*)\}/.exec(line);
    if (braces) for (const [, key, raw] of braces[1].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[key] = raw;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (!Number.isNaN(value)) found.push({ labels, value });
  }
  return found;
}
