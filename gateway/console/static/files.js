// Files page: recordings and snapshots, newest first, one page at a time
// (limit/offset: the service pages over any number of files), filter by camera,
// play/view on signed links, download, delete one or several with confirmation.
import { useEffect, useRef, useState } from "preact/hooks";
import {
  Modal,
  can,
  errorText,
  formatBytes,
  formatDuration,
  formatTime,
  html,
  setHash,
  signedLink,
} from "./util.js";

const PAGE_SIZE = 100;
const KINDS = { recordings: "Recordings", snapshots: "Snapshots" };

function Player({ kind, file, url, onClose }) {
  return html`<${Modal} title=${file.filename} onClose=${onClose} wide>
    ${url === null
      ? html`<p>This service cannot sign download links yet, so the file cannot be shown in the page.</p>`
      : kind === "recordings"
        ? html`<video class="player" controls autoplay muted playsinline preload="metadata" src=${url}
            aria-label=${`Recording ${file.filename}`}></video>`
        : html`<img class="lightbox" src=${url} alt=${`Snapshot ${file.filename}`} />`}
    <p class="meta">${formatTime(file.modified_time)} · ${formatBytes(file.file_size)}
      ${url && html` · <a href=${url} download=${file.filename}>Download</a>`}</p>
  <//>`;
}

function DeleteDialog({ rpc, kind, names, onClose, onDone }) {
  const [results, setResults] = useState(null);
  const [busy, setBusy] = useState(false);
  const method = kind === "recordings" ? "delete_recording" : "delete_snapshot";

  async function confirm() {
    setBusy(true);
    const outcome = await Promise.all(
      names.map((filename) =>
        rpc.call(method, { filename }).then(
          () => ({ filename, ok: true }),
          (err) => ({
            filename,
            ok: false,
            why:
              err.code === -32005
                ? "it is still being recorded: stop the recording first"
                : err.code === -32010
                  ? "it no longer exists"
                  : errorText(err),
          }),
        ),
      ),
    );
    setResults(outcome);
    setBusy(false);
    onDone();
  }

  const failed = results ? results.filter((r) => !r.ok) : [];
  return html`<${Modal} title=${`Delete ${names.length === 1 ? "file" : `${names.length} files`}`} onClose=${onClose}>
    ${results === null
      ? html`<p>Delete ${names.length === 1 ? html`<strong>${names[0]}</strong>` : `these ${names.length} files`}?
            This cannot be undone.</p>
          <div class="actions">
            <button class="danger" onClick=${confirm} disabled=${busy}>${busy ? "Deleting…" : "Delete"}</button>
            <button onClick=${(e) => e.target.closest("dialog").close()}>Cancel</button>
          </div>`
      : html`<p role="status">${results.length - failed.length} deleted${failed.length ? `, ${failed.length} refused` : ""}.</p>
          ${failed.length > 0 &&
          html`<ul class="errors" role="alert">
            ${failed.map((r) => html`<li><strong>${r.filename}</strong> was not deleted: ${r.why}.</li>`)}
          </ul>`}
          <div class="actions"><button onClick=${(e) => e.target.closest("dialog").close()}>Close</button></div>`}
  <//>`;
}

export function FilesPage({ rpc, role, cameras, generation, query }) {
  const kind = KINDS[query.kind] ? query.kind : "recordings";
  const offset = Math.max(0, parseInt(query.offset || "0", 10) || 0);
  const device = query.device || "";
  const [page, setPage] = useState(null);
  const [error, setError] = useState("");
  const [selected, setSelected] = useState(new Set());
  const [open, setOpen] = useState(null); // {file, url}
  const [deleting, setDeleting] = useState(null); // [filenames]
  const [reload, setReload] = useState(0);
  const operator = can(role, "operator");

  const go = (changes) => setHash("files", { kind, offset: offset || undefined, device, ...changes });

  useEffect(() => {
    if (!generation) return undefined;
    let live = true;
    const started = performance.now();
    const params = { limit: PAGE_SIZE, offset };
    if (device) params.device = device;
    rpc.call(kind === "recordings" ? "list_recordings" : "list_snapshots", params).then(
      (result) => {
        if (!live) return;
        const now = performance.now();
        setPage({ ...result, kind, fetchMs: now - started, receivedAt: now });
        setError("");
      },
      (err) => live && setError(errorText(err)),
    );
    return () => {
      live = false;
    };
  }, [generation, kind, offset, device, reload]);

  useEffect(() => setSelected(new Set()), [kind, offset, device]);

  // Timings on the table (bench/console.py reads them): the call, and data-to-rendered rows.
  const table = useRef(null);
  useEffect(() => {
    if (!page || !table.current) return;
    table.current.dataset.fetchMs = page.fetchMs.toFixed(1);
    table.current.dataset.renderMs = (performance.now() - page.receivedAt).toFixed(1);
    table.current.dataset.offset = String(page.offset);
  }, [page]);

  // A finished recording appears on the first page by itself.
  useEffect(
    () =>
      rpc.onNotification((method, params) => {
        if (method === "recording_status_update" && params.status !== "STARTED" && offset === 0) setReload((n) => n + 1);
      }),
    [offset],
  );

  async function show(file) {
    try {
      setOpen({ file, url: await signedLink(rpc, kind, file.filename) });
    } catch (err) {
      setError(errorText(err));
    }
  }

  async function download(file) {
    try {
      const url = await signedLink(rpc, kind, file.filename, 300);
      if (!url) throw new Error("this service cannot sign download links");
      const a = document.createElement("a");
      a.href = url;
      a.download = file.filename;
      document.body.appendChild(a);
      a.click();
      a.remove();
    } catch (err) {
      setError(errorText(err));
    }
  }

  const files = page && page.kind === kind ? page.files : [];
  const total = page ? page.total : 0;
  const toggle = (name) =>
    setSelected((old) => {
      const next = new Set(old);
      if (next.has(name)) next.delete(name);
      else next.add(name);
      return next;
    });
  const allSelected = files.length > 0 && files.every((f) => selected.has(f.filename));
  const last = Math.max(0, Math.floor((total - 1) / PAGE_SIZE) * PAGE_SIZE);

  return html`<section aria-labelledby="files-title">
    <h1 id="files-title">Files</h1>
    <div class="toolbar">
      <div role="tablist" aria-label="File kind" class="tabs">
        ${Object.entries(KINDS).map(
          ([id, label]) => html`<button role="tab" aria-selected=${id === kind} tabindex=${id === kind ? 0 : -1}
            onClick=${() => go({ kind: id, offset: undefined })}
            onKeyDown=${(e) => {
              if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
                const other = id === "recordings" ? "snapshots" : "recordings";
                go({ kind: other, offset: undefined });
                setTimeout(() => document.querySelector('[role="tab"][aria-selected="true"]')?.focus(), 0);
              }
            }}>${label}</button>`,
        )}
      </div>
      <span class="inline-field">
        <label for="camera-filter">Camera</label>
        <select id="camera-filter" value=${device}
          onChange=${(e) => go({ device: e.currentTarget.value, offset: undefined })}>
          <option value="">All cameras</option>
          ${Object.values(cameras).map((c) => html`<option value=${c.id}>${c.name ? `${c.name} (${c.id})` : c.id}</option>`)}
        </select>
      </span>
      ${operator &&
      html`<button class="danger" disabled=${selected.size === 0} onClick=${() => setDeleting([...selected])}>
        Delete selected (${selected.size})</button>`}
    </div>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div role="tabpanel" aria-label=${KINDS[kind]}>
      <table class="files" data-kind=${kind} ref=${table}>
        <caption class="sr-only">${KINDS[kind]}, newest first</caption>
        <thead>
          <tr>
            ${operator &&
            html`<th scope="col" class="check"><input type="checkbox" aria-label="Select all on this page"
              checked=${allSelected}
              onChange=${() => setSelected(allSelected ? new Set() : new Set(files.map((f) => f.filename)))} /></th>`}
            <th scope="col">File</th>
            <th scope="col">Camera</th>
            <th scope="col">Modified</th>
            <th scope="col">Size</th>
            ${kind === "recordings" && html`<th scope="col">Length</th>`}
            <th scope="col"><span class="sr-only">Actions</span></th>
          </tr>
        </thead>
        <tbody>
          ${files.map(
            (f) => html`<tr key=${f.filename}>
              ${operator &&
              html`<td class="check"><input type="checkbox" aria-label=${`Select ${f.filename}`}
                checked=${selected.has(f.filename)} onChange=${() => toggle(f.filename)} /></td>`}
              <td class="name" data-label="File">${f.filename}</td>
              <td data-label="Camera">${f.device || "–"}</td>
              <td data-label="Modified">${formatTime(f.modified_time)}</td>
              <td data-label="Size">${formatBytes(f.file_size)}</td>
              ${kind === "recordings" && html`<td data-label="Length">${formatDuration(f.duration)}</td>`}
              <td class="row-actions">
                <button onClick=${() => show(f)}>${kind === "recordings" ? "Play" : "View"}<span class="sr-only"> ${f.filename}</span></button>
                <button onClick=${() => download(f)}>Download<span class="sr-only"> ${f.filename}</span></button>
                ${operator &&
                html`<button class="danger" onClick=${() => setDeleting([f.filename])}>Delete<span class="sr-only"> ${f.filename}</span></button>`}
              </td>
            </tr>`,
          )}
        </tbody>
      </table>
      ${page && files.length === 0 && html`<p>No ${kind} here.</p>`}
    </div>
    <nav class="pager" aria-label="Pages of files">
      <button onClick=${() => go({ offset: undefined })} disabled=${offset === 0}>First</button>
      <button onClick=${() => go({ offset: Math.max(0, offset - PAGE_SIZE) || undefined })} disabled=${offset === 0}>Previous</button>
      <span role="status">${total ? `${Math.min(offset + 1, total)}–${Math.min(offset + PAGE_SIZE, total)} of ${total}` : "0 files"}</span>
      <button onClick=${() => go({ offset: offset + PAGE_SIZE })} disabled=${offset + PAGE_SIZE >= total}>Next</button>
      <button onClick=${() => go({ offset: last || undefined })} disabled=${offset >= last}>Last</button>
    </nav>
    ${open && html`<${Player} kind=${kind} file=${open.file} url=${open.url} onClose=${() => setOpen(null)} />`}
    ${deleting &&
    html`<${DeleteDialog} rpc=${rpc} kind=${kind} names=${deleting}
      onClose=${() => setDeleting(null)}
      onDone=${() => {
        setSelected(new Set());
        setReload((n) => n + 1);
      }} />`}
  </section>`;
}
