// Storage page (admin): usage and its warning level, the retention policy form, "clean up now".
import { useEffect, useState } from "preact/hooks";
import { errorText, formatBytes, html } from "./util.js";

const POLICY_KEY = "camservice.console.retention";

function Usage({ info, level }) {
  const percent = info.usage_percentage;
  const state = level || (info.low_space_warning ? "warning" : "ok");
  return html`<div class="card pad">
    <h2>Usage</h2>
    <div class="meter" data-level=${state} role="meter" aria-label="Disk usage" aria-valuemin="0" aria-valuemax="100"
      aria-valuenow=${percent} aria-valuetext=${`${percent}% used`}>
      <div class="fill" style=${`width:${Math.min(100, percent)}%`}></div>
    </div>
    <p>
      <strong>${percent}%</strong> used: ${formatBytes(info.used_space)} of ${formatBytes(info.total_space)}${", "}
      ${formatBytes(info.available_space)} free.
    </p>
    <p class=${`level level-${state}`} role="status">
      ${state === "ok"
        ? "Below the warning threshold."
        : state === "critical"
          ? "Critical: above the critical threshold. Recordings may stop."
          : "Warning: above the low-space warning threshold."}
    </p>
    <dl class="pairs">
      <dt>Recordings</dt><dd>${formatBytes(info.recordings_size)}</dd>
      <dt>Snapshots</dt><dd>${formatBytes(info.snapshots_size)}</dd>
    </dl>
  </div>`;
}

function RetentionForm({ rpc }) {
  const saved = JSON.parse(sessionStorage.getItem(POLICY_KEY) || "null");
  const [policy, setPolicy] = useState(
    saved || { policy_type: "age", enabled: true, max_age_days: 30, max_size_gb: 100 },
  );
  const [message, setMessage] = useState(saved ? "Showing the policy last saved from this tab." : "");
  const [error, setError] = useState("");
  const set = (key) => (e) =>
    setPolicy({ ...policy, [key]: e.currentTarget.type === "checkbox" ? e.currentTarget.checked : e.currentTarget.value });

  async function submit(event) {
    event.preventDefault();
    const params = { policy_type: policy.policy_type, enabled: !!policy.enabled };
    if (policy.policy_type === "age") params.max_age_days = Number(policy.max_age_days);
    if (policy.policy_type === "size") params.max_size_gb = Number(policy.max_size_gb);
    setError("");
    try {
      const stored = await rpc.call("set_retention_policy", params);
      const next = { ...policy, ...stored };
      delete next.message;
      sessionStorage.setItem(POLICY_KEY, JSON.stringify(next));
      setMessage(stored.message || "Saved.");
    } catch (err) {
      setMessage("");
      setError(errorText(err));
    }
  }

  return html`<form class="card pad stack" onSubmit=${submit} aria-labelledby="retention-title">
    <h2 id="retention-title">Retention policy</h2>
    <label>Policy
      <select name="policy_type" value=${policy.policy_type} onChange=${set("policy_type")}>
        <option value="age">Delete files older than…</option>
        <option value="size">Keep total size under…</option>
        <option value="manual">Manual (never delete by itself)</option>
      </select></label>
    <label class="inline"><input type="checkbox" name="enabled" checked=${!!policy.enabled} onChange=${set("enabled")} />
      Enabled</label>
    ${policy.policy_type === "age" &&
    html`<label>Maximum age (days)
      <input type="number" name="max_age_days" min="0.001" max="36500" step="any" required value=${policy.max_age_days ?? ""}
        onInput=${set("max_age_days")} /></label>`}
    ${policy.policy_type === "size" &&
    html`<label>Maximum size (GB)
      <input type="number" name="max_size_gb" min="0.001" max="1000000" step="any" required value=${policy.max_size_gb ?? ""}
        onInput=${set("max_size_gb")} /></label>`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <p class="message" role="status">${message}</p>
    <div class="actions"><button class="primary" type="submit">Save policy</button></div>
  </form>`;
}

function Cleanup({ rpc, onDone }) {
  const [result, setResult] = useState("");
  const [busy, setBusy] = useState(false);
  async function run() {
    setBusy(true);
    setResult("Cleaning up…");
    try {
      const r = await rpc.call("cleanup_old_files", undefined, 120000);
      setResult(r.message || `${r.files_deleted} file(s) deleted, ${formatBytes(r.space_freed)} freed`);
      onDone();
    } catch (err) {
      setResult(`Clean-up failed: ${errorText(err)}`);
    } finally {
      setBusy(false);
    }
  }
  return html`<div class="card pad stack">
    <h2>Clean up</h2>
    <p>Apply the retention policy now instead of waiting for the next pass.</p>
    <div class="actions"><button onClick=${run} disabled=${busy}>Clean up now</button></div>
    <p class="message" role="status">${result}</p>
  </div>`;
}

export function StoragePage({ rpc, generation, storageEvent }) {
  const [info, setInfo] = useState(null);
  const [error, setError] = useState("");
  const [reload, setReload] = useState(0);
  useEffect(() => {
    if (!generation) return;
    rpc.call("get_storage_info").then(
      (r) => {
        setInfo(r);
        setError("");
      },
      (err) => setError(errorText(err)),
    );
  }, [generation, reload, storageEvent]);
  return html`<section aria-labelledby="storage-title">
    <h1 id="storage-title">Storage and retention</h1>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="columns">
      ${info ? html`<${Usage} info=${info} level=${storageEvent?.level} />` : html`<p>Loading…</p>`}
      <div class="stack">
        <${RetentionForm} rpc=${rpc} />
        <${Cleanup} rpc=${rpc} onDone=${() => setReload((n) => n + 1)} />
      </div>
    </div>
  </section>`;
}
