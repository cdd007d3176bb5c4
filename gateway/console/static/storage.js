// Storage page (admin): usage and its warning level, the retention policy form, "clean up now".
import { useEffect, useState } from "preact/hooks";
import { errorText, fetchMetrics, formatBytes, html, metricSamples } from "./util.js";

const POLICY_KEY = "camservice.console.retention";

/**
 * What the API's results do not carry, read from /metrics (admin, like this page):
 * the warn/critical thresholds (config) and the retention policy in force.
 */
function useServiceSettings(rpc, generation) {
  const [settings, setSettings] = useState({ loaded: false });
  useEffect(() => {
    if (!generation) return;
    fetchMetrics(rpc).then(
      (text) => {
        const one = (name) => metricSamples(text, name)[0];
        const ratio = (name) => (one(name) ? Math.round(one(name).value * 1000) / 10 : null);
        const info = one("camservice_retention_policy_info");
        let policy = null;
        if (info) {
          const age = one("camservice_retention_max_age_seconds");
          const size = one("camservice_retention_max_size_bytes");
          policy = {
            policy_type: info.labels.policy_type,
            enabled: info.labels.enabled === "true",
            max_age_days: age ? age.value / 86400 : null,
            max_size_gb: size ? size.value / 1e9 : null,
          };
        }
        setSettings({
          loaded: true,
          warn: ratio("camservice_storage_warn_ratio"),
          critical: ratio("camservice_storage_critical_ratio"),
          policy,
        });
      },
      () => setSettings({ loaded: true }),
    );
  }, [generation]);
  return settings;
}

function Usage({ info, level, warn, critical }) {
  const percent = info.usage_percentage;
  const measured = critical != null && percent >= critical ? "critical" : warn != null && percent >= warn ? "warning" : null;
  const state = level || measured || (info.low_space_warning ? "warning" : "ok");
  return html`<div class="card pad">
    <h2>Usage</h2>
    <div class="meter" data-level=${state} role="meter" aria-label="Disk usage" aria-valuemin="0" aria-valuemax="100"
      aria-valuenow=${percent} aria-valuetext=${`${percent}% used`}>
      <div class="fill" style=${`width:${Math.min(100, percent)}%`}></div>
      ${warn != null && html`<div class="mark mark-warn" style=${`left:${warn}%`} aria-hidden="true"></div>`}
      ${critical != null && html`<div class="mark mark-critical" style=${`left:${critical}%`} aria-hidden="true"></div>`}
    </div>
    ${warn != null &&
    html`<p class="hint thresholds">Warning at ${warn}%, critical at ${critical}% (<code>storage.warn_percent</code>, <code>storage.critical_percent</code>).</p>`}
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

function RetentionForm({ rpc, current }) {
  const saved = JSON.parse(sessionStorage.getItem(POLICY_KEY) || "null");
  const [policy, setPolicy] = useState(
    current || saved || { policy_type: "age", enabled: true, max_age_days: 30, max_size_gb: 100 },
  );
  const [message, setMessage] = useState(
    current ? "Showing the policy in force." : saved ? "Showing the policy last saved from this tab." : "",
  );
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
  const settings = useServiceSettings(rpc, generation);
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
      ${info
        ? html`<${Usage} info=${info} level=${storageEvent?.level} warn=${settings.warn} critical=${settings.critical} />`
        : html`<p>Loading…</p>`}
      <div class="stack">
        ${settings.loaded
          ? html`<${RetentionForm} rpc=${rpc} current=${settings.policy} />`
          : html`<p class="card pad">Loading the retention policy…</p>`}
        <${Cleanup} rpc=${rpc} onDone=${() => setReload((n) => n + 1)} />
      </div>
    </div>
  </section>`;
}
