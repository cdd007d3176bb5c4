// System page (admin): status and process table refreshed live (get_status,
// get_metrics every 2 s while shown), request rate and latency percentiles over
// the last 15 minutes (from /metrics' latency histogram), and the event log.
import { useEffect, useState } from "preact/hooks";
import { errorText, fetchMetrics, formatBytes, formatDuration, formatTime, html, metricSamples } from "./util.js";

const POLL_MS = 2000;
const SCRAPE_MS = 5000;
const WINDOW_MS = 15 * 60 * 1000;
const HISTOGRAM = "camservice_request_duration_seconds_bucket";

// Kept at module level: leaving the page and coming back keeps the charts' history.
const history = { rate: [], p50: [], p95: [], p99: [], lastTotal: null, lastBuckets: null };

function trim(points, now) {
  while (points.length && points[0].t < now - WINDOW_MS) points.shift();
}

/** Summed cumulative buckets {le: count} of the request latency histogram in Prometheus text. */
export function parseBuckets(text) {
  const buckets = new Map();
  for (const line of text.split("\n")) {
    if (!line.startsWith(HISTOGRAM)) continue;
    const le = /le="([^"]+)"/.exec(line);
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (!le || Number.isNaN(value)) continue;
    const bound = le[1] === "+Inf" ? Infinity : Number(le[1]);
    buckets.set(bound, (buckets.get(bound) || 0) + value);
  }
  return [...buckets.entries()].sort((a, b) => a[0] - b[0]);
}

/** The q-quantile (seconds) of the requests between two scrapes, interpolated within a bucket. */
export function quantile(before, after, q) {
  const delta = after.map(([le, count], i) => [le, count - (before[i] && before[i][0] === le ? before[i][1] : 0)]);
  if (delta.some(([, c]) => c < 0)) return null; // a counter reset (a gateway restarted)
  const total = delta.length ? delta[delta.length - 1][1] : 0;
  if (!total) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, count] of delta) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      const inBucket = count - below;
      return lower + (le - lower) * (inBucket ? (rank - below) / inBucket : 1);
    }
    lower = le;
    below = count;
  }
  return lower;
}

function Chart({ title, series, unit, now }) {
  const width = 600;
  const height = 160;
  const all = series.flatMap((s) => s.points.map((p) => p.v));
  const max = Math.max(1e-9, ...all) * 1.1;
  const x = (t) => ((t - (now - WINDOW_MS)) / WINDOW_MS) * width;
  const y = (v) => height - (v / max) * height;
  const label = (v) => (unit === "ms" ? `${v < 10 ? v.toFixed(2) : Math.round(v)} ms` : `${v.toFixed(1)} ${unit}`);
  return html`<figure class="card pad chart">
    <figcaption>${title}</figcaption>
    <svg viewBox=${`0 0 ${width} ${height}`} preserveAspectRatio="none" role="img"
      aria-label=${`${title}: ${series.map((s) => `${s.name} ${s.points.length ? label(s.points[s.points.length - 1].v) : "no data"}`).join(", ")}`}>
      <line x1="0" y1=${height - 0.5} x2=${width} y2=${height - 0.5} class="axis" />
      ${series.map(
        (s) => html`<polyline class=${`line ${s.cls}`} fill="none" vector-effect="non-scaling-stroke"
          points=${s.points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ")} />`,
      )}
    </svg>
    <div class="row spread meta">
      <span>15 min ago</span><span>${all.length ? `max ${label(max / 1.1)}` : "collecting…"}</span><span>now</span>
    </div>
    <ul class="legend">
      ${series.map(
        (s) => html`<li><span class=${`swatch ${s.cls}`}></span>${s.name}:
          ${s.points.length ? label(s.points[s.points.length - 1].v) : "–"}</li>`,
      )}
    </ul>
  </figure>`;
}

/**
 * A process's state: its role's component in get_status when the API reports one; a process with
 * no component there (the event bus) is running while the supervisor gives it a pid.
 */
function stateOf(components, row) {
  if (!components) return "–";
  if (components[row.name]) return components[row.name];
  const role = row.name.split(/[-_: ]/)[0];
  if (components[role]) return components[role];
  return row.pid ? "running" : "down";
}

/** A process's uptime: from its row when the API gives one, else from the last /metrics scrape plus the time since. */
function processUptime(row, uptimes, now) {
  if (row.uptime !== undefined) return formatDuration(row.uptime);
  const seconds = uptimes.of[row.name];
  if (seconds === undefined) return "–";
  return formatDuration(seconds > 0 ? seconds + Math.max(0, now - uptimes.at) / 1000 : 0);
}

export function SystemPage({ rpc, ready, events }) {
  const [status, setStatus] = useState(null);
  const [metrics, setMetrics] = useState(null);
  const [error, setError] = useState("");
  const [latencyNote, setLatencyNote] = useState("");
  const [uptimes, setUptimes] = useState({ at: 0, of: {} });
  const [now, setNow] = useState(Date.now());

  useEffect(() => {
    if (!ready) return undefined;
    let stopped = false;
    async function poll() {
      if (document.visibilityState === "hidden") return;
      try {
        const [s, m] = await Promise.all([rpc.call("get_status"), rpc.call("get_metrics")]);
        if (stopped) return;
        const t = Date.now();
        if (history.lastTotal && m.total_requests >= history.lastTotal.v) {
          const rate = (m.total_requests - history.lastTotal.v) / ((t - history.lastTotal.t) / 1000);
          history.rate.push({ t, v: rate });
        }
        history.lastTotal = { t, v: m.total_requests };
        trim(history.rate, t);
        setStatus(s);
        setMetrics(m);
        setNow(t);
        setError("");
      } catch (err) {
        if (!stopped) setError(errorText(err));
      }
    }
    async function scrape() {
      if (document.visibilityState === "hidden") return;
      try {
        const text = await fetchMetrics(rpc);
        const buckets = parseBuckets(text);
        const t = Date.now();
        // Process uptime: the supervisor's samples, which get_metrics' rows do not carry.
        const uptime = {};
        for (const { labels, value } of metricSamples(text, "camservice_process_uptime_seconds")) {
          uptime[labels.process] = value;
        }
        if (!stopped) setUptimes({ at: t, of: uptime });
        if (history.lastBuckets) {
          for (const [key, q] of [["p50", 0.5], ["p95", 0.95], ["p99", 0.99]]) {
            const v = quantile(history.lastBuckets, buckets, q);
            if (v !== null) history[key].push({ t, v: v * 1000 });
            trim(history[key], t);
          }
        }
        history.lastBuckets = buckets;
        setLatencyNote("");
      } catch (err) {
        if (!stopped) setLatencyNote(`Latency percentiles unavailable: ${err.message}`);
      }
    }
    poll();
    scrape();
    const timers = [setInterval(poll, POLL_MS), setInterval(scrape, SCRAPE_MS)];
    return () => {
      stopped = true;
      timers.forEach(clearInterval);
    };
  }, [ready]);

  const processes = metrics?.processes || [];
  return html`<section aria-labelledby="system-title">
    <div class="row spread">
      <h1 id="system-title">System</h1>
      ${status &&
      html`<span class=${`status status-${status.status}`} role="status">
        ${status.status} · v${status.version} · up ${formatDuration(status.uptime)}</span>`}
    </div>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${metrics &&
    html`<dl class="pairs inline-pairs">
      <dt>Connections</dt><dd>${metrics.active_connections}</dd>
      <dt>Requests</dt><dd>${metrics.total_requests}</dd>
      <dt>Average response</dt><dd>${metrics.average_response_time} ms</dd>
      <dt>Error rate</dt><dd>${(metrics.error_rate * 100).toFixed(2)}%</dd>
      <dt>Host CPU</dt><dd>${metrics.cpu_usage}%</dd>
      <dt>Host memory</dt><dd>${metrics.memory_usage}%</dd>
    </dl>`}
    <div class="table-scroll">
      <table class="processes">
        <caption>Processes</caption>
        <thead>
          <tr><th scope="col">Role</th><th scope="col">PID</th><th scope="col">State</th><th scope="col">CPU %</th>
            <th scope="col">RSS</th><th scope="col">Restarts</th><th scope="col">Uptime</th></tr>
        </thead>
        <tbody>
          ${processes.map(
            (p) => html`<tr key=${p.name}>
              <th scope="row">${p.name}</th>
              <td>${p.pid ?? "–"}</td>
              <td>${p.state || stateOf(status?.components, p)}</td>
              <td>${p.cpu_percent ?? "–"}</td>
              <td>${formatBytes(p.rss_bytes)}</td>
              <td>${p.restarts ?? 0}</td>
              <td>${processUptime(p, uptimes, now)}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
    <div class="charts">
      <${Chart} title="Request rate" unit="req/s" now=${now}
        series=${[{ name: "requests", cls: "s1", points: history.rate }]} />
      <${Chart} title="Latency percentiles" unit="ms" now=${now}
        series=${[
          { name: "P50", cls: "s1", points: history.p50 },
          { name: "P95", cls: "s2", points: history.p95 },
          { name: "P99", cls: "s3", points: history.p99 },
        ]} />
    </div>
    ${latencyNote && html`<p class="hint">${latencyNote}</p>`}
    <h2>Event log</h2>
    <ol class="events" aria-label="Notifications, newest first">
      ${events.length === 0 && html`<li class="meta">No notification since this page was opened.</li>`}
      ${events.slice(0, 100).map(
        (e) => html`<li><time datetime=${e.at.toISOString()}>${formatTime(e.at.toISOString())}</time>
          <strong>${e.method}</strong> <code>${JSON.stringify(e.params)}</code></li>`,
      )}
    </ol>
  </section>`;
}
