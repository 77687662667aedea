//! A transport to `chaos agent --stdio` running in the agent DaemonSet's
//! pod on a node, over the pods/exec WebSocket (kube's `ws` feature).
//! Like the SSH transport it only moves bytes: the agent protocol
//! (`agent::client`) runs on top, heartbeats and all, so the lease
//! applies unchanged — if this process dies or the stream drops, the
//! agent sees end of input or a silent lease and reverts by itself.
//!
//! The exec stream is async; the agent client is blocking. Two tasks on
//! the client's runtime pump bytes between them through channels.

use std::io::{BufReader, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::Kube;
use super::K8sError;
use crate::agent::client::AgentClient;
use crate::agent::protocol::{millis, AgentInfo};

/// The agent pod on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    pub namespace: String,
    pub name: String,
}

/// Finds the agent DaemonSet's pod on `node`.
pub fn find_agent(
    kube: &Kube,
    namespace: &str,
    selector: &str,
    node: &str,
) -> Result<AgentPod, K8sError> {
    let api: Api<Pod> = Api::namespaced(kube.client.clone(), namespace);
    let lp =
        ListParams::default().labels(selector).fields(&format!("spec.nodeName={node}"));
    let call = format!(
        "GET /api/v1/namespaces/{namespace}/pods?labelSelector={selector}&fieldSelector=spec.nodeName={node}"
    );
    let list = kube.call(&call, api.list(&lp))?;
    list.items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .map(|name| AgentPod { namespace: namespace.to_string(), name })
        .ok_or_else(|| {
            K8sError::Target(format!(
                "no chaos agent pod ({selector}) on node {node} in namespace {namespace}; \
                 apply deploy/kubernetes/agent-daemonset.yaml"
            ))
        })
}

/// Blocking reader over chunks from the exec stream.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Blocking writer into the exec stream; dropping it closes the agent's stdin.
struct ChunkWriter {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.tx.send(data.to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "exec stream closed")
        })?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Execs `chaos agent --stdio --lease LEASE` in the agent pod and says
/// `hello` through it. A refused upgrade (no WebSocket, RBAC) is an
/// error that names the pod and what to grant.
pub fn connect(
    kube: &Kube,
    pod: &AgentPod,
    lease: Duration,
) -> Result<(AgentClient, AgentInfo), K8sError> {
    let api: Api<Pod> = Api::namespaced(kube.client.clone(), &pod.namespace);
    let command = vec![
        "chaos".to_string(),
        "agent".into(),
        "--stdio".into(),
        "--lease".into(),
        format!("{}ms", millis(lease)),
    ];
    let ap =
        AttachParams::default().container("agent").stdin(true).stdout(true).stderr(false);
    let call = format!(
        "POST /api/v1/namespaces/{}/pods/{}/exec?command=chaos&command=agent&command=--stdio (WebSocket)",
        pod.namespace, pod.name
    );
    let name = pod.name.clone();
    let attached = kube.call(&call, async move { api.exec(&name, command, &ap).await });
    let refused = |what: String| {
        format!(
            "the API server refused the pods/exec upgrade ({what}); chaos needs `create` on \
             pods/exec for the agent pods (deploy/kubernetes/rbac.yaml) and an API server path \
             that passes WebSocket upgrades"
        )
    };
    let mut attached = attached.map_err(|e| match e {
        K8sError::Transport { call, cause } => {
            K8sError::Transport { call, cause: refused(cause) }
        }
        K8sError::Api { call, status, reason, message, .. } => K8sError::Transport {
            call,
            cause: refused(format!("{status} {reason}: {message}")),
        },
        other => other,
    })?;
    let (Some(mut stdout), Some(mut stdin)) = (attached.stdout(), attached.stdin())
    else {
        return Err(K8sError::Transport {
            call,
            cause: "the exec stream has no stdin/stdout".into(),
        });
    };
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
    let (in_tx, mut in_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    kube.block_on(async move {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out_tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Some(chunk) = in_rx.recv().await {
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
                let _ = stdin.flush().await;
            }
            let _ = stdin.shutdown().await;
        });
        // Keeps the WebSocket open until both directions are done.
        tokio::spawn(async move {
            let _ = attached.join().await;
        });
    });
    let reader = BufReader::new(ChunkReader { rx: out_rx, buf: Vec::new(), pos: 0 });
    let client = AgentClient::new(
        reader,
        ChunkWriter { tx: in_tx },
        Duration::from_secs(30).max(lease * 2),
    );
    let info = client.hello(lease).map_err(|e| K8sError::Transport {
        call: format!("chaos agent in pod {}/{}", pod.namespace, pod.name),
        cause: e.to_string(),
    })?;
    client.start_heartbeat(lease / 3, lease);
    Ok((client, info))
}
