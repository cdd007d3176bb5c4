// The console's shell: login, navigation, the connection banner, and the state
// every page shares (cameras kept live by notifications, the event log).
import { render } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { Rpc, RpcError, wsUrl } from "./rpc.js";
import { can, html, setHash, useHash, useTick } from "./util.js";
import { CamerasPage } from "./cameras.js";
import { FilesPage } from "./files.js";
import { StoragePage } from "./storage.js";
import { SystemPage } from "./system.js";

const TOKEN_KEY = "camservice.console.token";
const EVENT_LOG_SIZE = 300;

const PAGES = [
  { id: "cameras", label: "Cameras", role: "viewer" },
  { id: "files", label: "Files", role: "viewer" },
  { id: "storage", label: "Storage", role: "admin" },
  { id: "system", label: "System", role: "admin" },
];

function Login({ rpc, notice }) {
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const field = useRef(null);
  useEffect(() => field.current?.focus(), []);

  async function submit(event) {
    event.preventDefault();
    const credential = token.trim();
    if (!credential) {
      setError("Enter a token or an API key.");
      return;
    }
    setBusy(true);
    setError("");
    try {
      await rpc.login(credential);
      sessionStorage.setItem(TOKEN_KEY, credential);
    } catch (err) {
      rpc.logout();
      setError(
        err instanceof RpcError ? "Sign-in refused: the token or API key is not valid." : "Cannot reach the service.",
      );
    } finally {
      setBusy(false);
    }
  }

  return html`<main class="login">
    <form class="card login-card" onSubmit=${submit} aria-labelledby="login-title">
      <h1 id="login-title">camservice console</h1>
      ${notice && html`<p class="notice" role="status">${notice}</p>`}
      <label for="credential">Token or API key</label>
      <input
        id="credential"
        type="password"
        autocomplete="off"
        spellcheck="false"
        value=${token}
        onInput=${(e) => setToken(e.currentTarget.value)}
        ref=${field}
      />
      <p class="hint">Kept for this browser tab only.</p>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button class="primary" type="submit" disabled=${busy}>${busy ? "Signing in…" : "Sign in"}</button>
    </form>
  </main>`;
}

function Banner({ rpc, state }) {
  useTick(1000, state === "reconnecting");
  if (state === "ready" || state === "idle" || state === "denied") return null;
  const wait = Math.max(0, Math.ceil((rpc.retryAt - Date.now()) / 1000));
  const text =
    state === "connecting"
      ? "Connecting…"
      : `Reconnecting… ${wait ? `next try in ${wait} s` : "trying now"} (attempt ${rpc.attempt})`;
  return html`<div class="banner" role="status" aria-live="polite" data-state=${state}>
    <span class="spinner" aria-hidden="true"></span>${text}
    ${state === "reconnecting" && html`<button onClick=${() => rpc.retryNow()}>Retry now</button>`}
  </div>`;
}

function matchCamera(cameras, device) {
  if (cameras[device]) return device;
  return Object.keys(cameras).find((id) => cameras[id].device === device);
}

/** Cameras by id, loaded on every (re)connect and then kept live by notifications alone. */
function useCameras(rpc, generation) {
  const [cameras, setCameras] = useState({});
  useEffect(() => {
    if (!generation) return;
    rpc.call("get_camera_list").then(
      (list) =>
        setCameras((old) => {
          const next = {};
          for (const camera of list.cameras) {
            const before = old[camera.id] || {};
            next[camera.id] = { ...before, ...camera, since: camera.recording ? before.since ?? null : null };
          }
          return next;
        }),
      () => {},
    );
  }, [generation]);
  useEffect(
    () =>
      rpc.onNotification((method, params) => {
        if (method === "camera_status_update" && params.id) {
          setCameras((old) => ({ ...old, [params.id]: { ...(old[params.id] || {}), ...params } }));
        } else if (method === "recording_status_update") {
          setCameras((old) => {
            const id = matchCamera(old, params.device);
            if (!id) return old;
            const camera = { ...old[id] };
            if (params.status === "STARTED") {
              camera.recording = true;
              camera.since = Date.now() - (params.duration || 0) * 1000;
              camera.recordingFile = params.filename;
            } else {
              camera.recording = false;
              camera.since = null;
              camera.lastRecording = params;
            }
            return { ...old, [id]: camera };
          });
        }
      }),
    [],
  );
  return [cameras, setCameras];
}

function useEventLog(rpc) {
  const [events, setEvents] = useState([]);
  const [storage, setStorage] = useState(null);
  useEffect(
    () =>
      rpc.onNotification((method, params) => {
        if (method === "storage_status_update") setStorage(params);
        setEvents((old) => [{ at: new Date(), method, params }, ...old].slice(0, EVENT_LOG_SIZE));
      }),
    [],
  );
  return [events, storage];
}

function App() {
  const rpc = useMemo(() => new Rpc(wsUrl()), []);
  const [state, setState] = useState(rpc.state);
  const [session, setSession] = useState(null);
  const [generation, setGeneration] = useState(0);
  const [notice, setNotice] = useState("");
  const hadSession = useRef(false);
  const route = useHash();
  const [cameras, setCameras] = useCameras(rpc, generation);
  const [events, storageEvent] = useEventLog(rpc);

  useEffect(() => {
    const off = rpc.onState((next) => {
      setState(next);
      if (next === "ready") {
        hadSession.current = true;
        setSession(rpc.session);
        setNotice("");
        setGeneration((g) => g + 1);
      } else if (next === "denied") {
        sessionStorage.removeItem(TOKEN_KEY);
        if (hadSession.current) setNotice("The service refused the credential (expired or revoked): sign in again.");
        hadSession.current = false;
        setSession(null);
      }
    });
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) rpc.resume(saved);
    return off;
  }, []);

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    hadSession.current = false;
    rpc.logout();
    setSession(null);
    setCameras({});
    setNotice("Signed out.");
  }

  if (!session) {
    // Resuming a kept session (not a login in progress, whose form must stay up to show errors).
    if ((state === "connecting" || state === "reconnecting") && sessionStorage.getItem(TOKEN_KEY))
      return html`<${Banner} rpc=${rpc} state=${state} /><main class="page"><p>Connecting to the service…</p></main>`;
    return html`<${Login} rpc=${rpc} notice=${notice} />`;
  }

  const role = session.role;
  const pages = PAGES.filter((p) => can(role, p.role));
  const page = pages.find((p) => p.id === route.page) ? route.page : "cameras";
  const props = { rpc, role, cameras, generation, ready: state === "ready", query: route.query, events, storageEvent };
  const body = {
    cameras: CamerasPage,
    files: FilesPage,
    storage: StoragePage,
    system: SystemPage,
  }[page];

  return html`
    <a class="skip" href="#main" onClick=${(e) => {
      e.preventDefault();
      document.getElementById("main")?.focus();
    }}>Skip to content</a>
    <header class="top">
      <span class="brand">camservice</span>
      <nav aria-label="Pages">
        ${pages.map(
          (p) => html`<a
            href=${`#/${p.id}`}
            aria-current=${p.id === page ? "page" : undefined}
            onClick=${(e) => {
              e.preventDefault();
              setHash(p.id);
            }}
            >${p.label}</a
          >`,
        )}
      </nav>
      <span class="who">
        <span class="role" title=${session.session_id}>${session.role}</span>
        <button onClick=${logout}>Log out</button>
      </span>
    </header>
    <${Banner} rpc=${rpc} state=${state} />
    <main id="main" class="page" tabindex="-1" data-page=${page}>
      <${body} ...${props} />
    </main>
  `;
}

render(html`<${App} />`, document.getElementById("app"));
