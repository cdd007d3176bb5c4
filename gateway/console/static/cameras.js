// Cameras page: a grid of cards kept live by the shell's notification-fed state,
// with snapshot, record (unlimited or timed), stop, stream URLs and live view.
import { useEffect, useRef, useState } from "preact/hooks";
import { Modal, can, copyText, errorText, formatDuration, html, signedLink, useTick } from "./util.js";

const UNITS = {
  seconds: { param: "duration_seconds", max: 86400 },
  minutes: { param: "duration_minutes", max: 1440 },
  hours: { param: "duration_hours", max: 24 },
};

/** The newest snapshot of each camera (a signed link), refreshed on every reconnect. */
function useLatestSnapshots(rpc, ids, generation) {
  const [latest, setLatest] = useState({});
  const key = ids.join(",");
  useEffect(() => {
    if (!generation) return;
    for (const id of ids) {
      rpc
        .call("list_snapshots", { device: id, limit: 1 })
        .then(async (page) => {
          const file = page.files[0];
          if (!file) return;
          const url = await signedLink(rpc, "snapshots", file.filename);
          setLatest((old) => ({ ...old, [id]: { filename: file.filename, url } }));
        })
        .catch(() => {});
    }
  }, [generation, key]);
  return [latest, setLatest];
}

function RecordDialog({ rpc, camera, onClose, onStarted }) {
  const [mode, setMode] = useState("unlimited");
  const [amount, setAmount] = useState(30);
  const [unit, setUnit] = useState("seconds");
  const [format, setFormat] = useState("mp4");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  async function submit(event) {
    event.preventDefault();
    const params = { device: camera.id, format };
    if (mode === "timed") params[UNITS[unit].param] = Number(amount);
    setBusy(true);
    setError("");
    try {
      const result = await rpc.call("start_recording", params);
      onStarted(result);
      event.target.closest("dialog").close();
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }

  return html`<${Modal} title=${`Record ${camera.name || camera.id}`} onClose=${onClose}>
    <form class="stack" onSubmit=${submit}>
      <fieldset>
        <legend>Length</legend>
        <label class="inline"
          ><input type="radio" name="mode" value="unlimited" checked=${mode === "unlimited"}
            onChange=${() => setMode("unlimited")} /> Until stopped</label
        >
        <label class="inline"
          ><input type="radio" name="mode" value="timed" checked=${mode === "timed"}
            onChange=${() => setMode("timed")} /> For a set time</label
        >
      </fieldset>
      ${mode === "timed" &&
      html`<div class="row">
        <label>Duration
          <input type="number" name="amount" min="1" max=${UNITS[unit].max} step="1" required value=${amount}
            onInput=${(e) => setAmount(e.currentTarget.value)} /></label>
        <label>Unit
          <select name="unit" value=${unit} onChange=${(e) => setUnit(e.currentTarget.value)}>
            ${Object.keys(UNITS).map((u) => html`<option value=${u}>${u}</option>`)}
          </select></label>
      </div>`}
      <label>Format
        <select name="format" value=${format} onChange=${(e) => setFormat(e.currentTarget.value)}>
          <option value="mp4">MP4</option>
          <option value="mkv">MKV</option>
        </select></label>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <div class="actions">
        <button class="primary" type="submit" disabled=${busy}>Start recording</button>
      </div>
    </form>
  <//>`;
}

function StreamsDialog({ camera, onClose }) {
  const [copied, setCopied] = useState("");
  const entries = Object.entries(camera.streams || {});
  return html`<${Modal} title=${`Stream URLs of ${camera.name || camera.id}`} onClose=${onClose}>
    ${entries.length === 0 && html`<p>The media backend serves no stream for this camera.</p>`}
    <ul class="plain stack">
      ${entries.map(
        ([kind, url]) => html`<li class="row">
          <label class="grow">${kind.toUpperCase()}
            <input readonly value=${url} onFocus=${(e) => e.currentTarget.select()} /></label>
          <button onClick=${async () => {
            try {
              await copyText(url);
              setCopied(`${kind.toUpperCase()} URL copied`);
            } catch {
              setCopied("Copy failed: select the text and copy it by hand");
            }
          }}>Copy<span class="sr-only"> ${kind} URL</span></button>
        </li>`,
      )}
    </ul>
    <p role="status" class="hint">${copied}</p>
  <//>`;
}

function LiveDialog({ camera, onClose }) {
  const streams = camera.streams || {};
  return html`<${Modal} title=${`Live: ${camera.name || camera.id}`} onClose=${onClose} wide>
    ${streams.webrtc
      ? html`<iframe class="live" src=${streams.webrtc} title=${`Live view of ${camera.id} (WebRTC)`}
            allow="autoplay; fullscreen"></iframe>
          <p class="hint">Played by the media server's own WebRTC (WHEP) page.
            ${streams.hls && html` Or open the <a href=${streams.hls} target="_blank" rel="noopener">HLS stream</a>.`}</p>`
      : streams.hls
        ? html`<iframe class="live" src=${streams.hls} title=${`Live view of ${camera.id} (HLS)`}></iframe>`
        : html`<p>The media backend does not stream this camera live. Take a snapshot or record instead.</p>`}
  <//>`;
}

/**
 * The service's MJPEG preview (GET /cameras/{id}/preview) for a camera the media backend
 * does not stream: an <img> on a signed link (an <img> cannot send credentials), fetched
 * with this session's headers. Unmounting drops the src, which ends the stream at once;
 * the service stops an idle camera's capture a few seconds after its last viewer left.
 */
function LivePreview({ rpc, camera, onEnded }) {
  const ref = useRef(null);
  const [url, setUrl] = useState(null);
  const [problem, setProblem] = useState("");
  useEffect(() => {
    let gone = false;
    fetch(`/cameras/${encodeURIComponent(camera.id)}/preview/link?expires_in=300`, {
      headers: rpc.authHeaders(),
      cache: "no-store",
    })
      .then(async (response) => {
        if (!response.ok) throw new Error((await response.text()).trim() || `answered ${response.status}`);
        const link = await response.json();
        const signed = new URL(link.url, window.location.href); // same origin: path and query only
        if (!gone) setUrl(signed.pathname + signed.search);
      })
      .catch((err) => !gone && setProblem(`Live preview unavailable: ${err.message}`));
    return () => {
      gone = true;
      if (ref.current) ref.current.removeAttribute("src"); // aborts the multipart request now
    };
  }, [camera.id]);
  if (problem) return html`<div class="placeholder" role="status">${problem}</div>`;
  if (!url) return html`<div class="placeholder">Starting live preview…</div>`;
  return html`<img ref=${ref} class="live-preview" src=${url} alt=${`Live preview of ${camera.name || camera.id}`}
    onError=${() => onEnded("Live preview ended")} />`;
}

function CameraCard({ rpc, role, camera, snapshot, onSnapshot }) {
  const [dialog, setDialog] = useState(null);
  const [message, setMessage] = useState("");
  const [busy, setBusy] = useState(false);
  const connected = camera.status === "CONNECTED";
  const operator = can(role, "operator");
  const live = camera.streams && (camera.streams.webrtc || camera.streams.hls);
  // No stream from the media backend (the ffmpeg backend): the service's own MJPEG preview.
  const [previewing, setPreviewing] = useState(false);
  const showPreview = previewing && connected && !live;

  async function act(what, fn) {
    setBusy(true);
    setMessage(`${what}…`);
    try {
      setMessage(await fn());
    } catch (err) {
      setMessage(`${what} failed: ${errorText(err)}`);
    } finally {
      setBusy(false);
    }
  }

  const snapshotNow = () =>
    act("Snapshot", async () => {
      const shot = await rpc.call("take_snapshot", { device: camera.id });
      const url = await signedLink(rpc, "snapshots", shot.filename);
      onSnapshot(camera.id, { filename: shot.filename, url });
      return `Snapshot saved: ${shot.filename}`;
    });

  const stop = () =>
    act("Stop", async () => {
      const result = await rpc.call("stop_recording", { device: camera.id });
      return `Recording stopped: ${result.filename}`;
    });

  const last = camera.lastRecording;
  return html`<article class="card camera" aria-labelledby=${`cam-${camera.id}`} data-camera=${camera.id}
      data-status=${camera.status}>
    <div class="thumb">
      ${showPreview
        ? html`<${LivePreview} rpc=${rpc} camera=${camera} onEnded=${(text) => {
            setPreviewing(false);
            setMessage(text);
          }} />`
        : snapshot?.url
          ? html`<img src=${snapshot.url} alt=${`Latest snapshot of ${camera.name || camera.id}`} />`
          : html`<div class="placeholder">${snapshot ? snapshot.filename : "No snapshot yet"}</div>`}
      ${showPreview && html`<span class="live-badge">LIVE</span>`}
      ${camera.recording &&
      html`<span class="rec" role="status">
        <span aria-hidden="true">●</span> REC${camera.since ? ` ${formatDuration((Date.now() - camera.since) / 1000)}` : ""}
      </span>`}
    </div>
    <div class="card-body">
      <div class="row spread">
        <h2 id=${`cam-${camera.id}`}>${camera.name || camera.id}</h2>
        <span class=${`status status-${(camera.status || "").toLowerCase()}`}>${camera.status}</span>
      </div>
      <p class="meta">
        <span>${camera.id}</span> · <span>${camera.device}</span><br />
        <span>${camera.resolution || "?"} @ ${camera.fps ?? "?"} fps</span>
      </p>
      ${last &&
      !camera.recording &&
      html`<p class="meta">Last recording ${last.status.toLowerCase()}${last.error ? `: ${last.error}` : ""}</p>`}
      <div class="actions wrap">
        ${operator &&
        html`<button onClick=${snapshotNow} disabled=${busy || !connected}>Snapshot</button>
          ${camera.recording
            ? html`<button class="danger" onClick=${stop} disabled=${busy}>Stop recording</button>`
            : html`<button onClick=${() => setDialog("record")} disabled=${busy || !connected}>Record…</button>`}`}
        ${live
          ? html`<button onClick=${() => setDialog("live")} disabled=${!connected}>Live view</button>`
          : html`<button aria-pressed=${showPreview} onClick=${() => setPreviewing(!showPreview)}
              disabled=${!connected}>${showPreview ? "Close live view" : "Live view"}</button>`}
        <button onClick=${() => setDialog("streams")}>Stream URLs</button>
      </div>
      <p class="message" role="status" aria-live="polite">${message}</p>
    </div>
    ${dialog === "record" &&
    html`<${RecordDialog} rpc=${rpc} camera=${camera} onClose=${() => setDialog(null)}
      onStarted=${(r) => setMessage(`Recording ${r.duration ? `for ${r.duration} s` : "until stopped"}: ${r.filename}`)} />`}
    ${dialog === "streams" && html`<${StreamsDialog} camera=${camera} onClose=${() => setDialog(null)} />`}
    ${dialog === "live" && html`<${LiveDialog} camera=${camera} onClose=${() => setDialog(null)} />`}
  </article>`;
}

export function CamerasPage({ rpc, role, cameras, generation }) {
  const list = Object.values(cameras).sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
  const [latest, setLatest] = useLatestSnapshots(
    rpc,
    list.map((c) => c.id),
    generation,
  );
  useTick(1000, list.some((c) => c.recording));
  const connected = list.filter((c) => c.status === "CONNECTED").length;
  return html`<section aria-labelledby="cameras-title">
    <div class="row spread">
      <h1 id="cameras-title">Cameras</h1>
      <span class="meta" role="status">${connected} of ${list.length} connected</span>
    </div>
    ${list.length === 0 && html`<p>No camera yet.</p>`}
    <div class="grid">
      ${list.map(
        (camera) => html`<${CameraCard}
          key=${camera.id}
          rpc=${rpc}
          role=${role}
          camera=${camera}
          snapshot=${latest[camera.id]}
          onSnapshot=${(id, shot) => setLatest((old) => ({ ...old, [id]: shot }))}
        />`,
      )}
    </div>
  </section>`;
}
