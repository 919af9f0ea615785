//! [`FaultyStore`]: an `ObjectStore` decorator that injects failures and
//! delays on chosen operations and paths — how tests make an upload hang past
//! the checkpoint timeout or a subtask's snapshot fail, without touching the
//! production code paths. Rules can be changed while a job runs.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::{
    path::Path, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Operations a rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Put,
    Get,
    /// `head` (existence and size), apart from `get`: a store can answer
    /// one and fail the other.
    Head,
    Delete,
    List,
    /// One part of a multipart upload (`put` matches its start): a failing
    /// part leaves a partial upload the writer must abort.
    Part,
    Any,
}

/// What happens to a matched operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Fail with a generic store error.
    Fail,
    /// Run the operation, then report a failure anyway (a write that landed
    /// but whose answer was lost, e.g. to a timeout).
    FailAfter,
    /// Wait, then run the operation (a long delay is a hang; dropping the
    /// future during the wait means the operation never happens).
    Delay(Duration),
}

/// One injection rule.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub op: FaultOp,
    /// Matches paths containing this string; ending in `$`, paths ending
    /// with the rest (e.g. a listing of exactly `jobs/pv`, not of
    /// `jobs/pv/_writer`).
    pub path_contains: String,
    pub action: FaultAction,
    /// How many more times the rule fires; `None` = always.
    pub remaining: Option<u32>,
}

impl FaultRule {
    /// Parses rules written as `op:path_contains:action[*times]`, separated
    /// by `;` — e.g. `put:/chk-3/agg/0/MANIFEST:delay=600000` or
    /// `get:shared/:fail*2`. Ops: put, get, head, delete, list, part, any;
    /// actions: `fail`, `fail-after` (the operation happens, its answer is
    /// an error), `delay=MS`. (The `CUTPOINT_FAULTS` variable of the binary.)
    /// `part` matches the parts of multipart uploads.
    pub fn parse_list(text: &str) -> Result<Vec<FaultRule>, String> {
        text.split(';')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|rule| {
                let err = |why: &str| format!("fault rule {rule:?}: {why}");
                let mut parts = rule.splitn(3, ':');
                let op = match parts.next().unwrap_or("") {
                    "put" => FaultOp::Put,
                    "get" => FaultOp::Get,
                    "head" => FaultOp::Head,
                    "delete" => FaultOp::Delete,
                    "list" => FaultOp::List,
                    "part" => FaultOp::Part,
                    "any" => FaultOp::Any,
                    _ => return Err(err("op must be put, get, head, delete, list, part or any")),
                };
                let path_contains = parts.next().ok_or_else(|| err("missing path"))?.to_string();
                let action = parts.next().ok_or_else(|| err("missing action"))?;
                let (action, remaining) = match action.split_once('*') {
                    Some((a, n)) => (a, Some(n.parse().map_err(|_| err("bad count"))?)),
                    None => (action, None),
                };
                let action = match action {
                    "fail" => FaultAction::Fail,
                    "fail-after" => FaultAction::FailAfter,
                    a => match a.strip_prefix("delay=").map(str::parse::<u64>) {
                        Some(Ok(ms)) => FaultAction::Delay(Duration::from_millis(ms)),
                        _ => return Err(err("action must be fail, fail-after or delay=MS")),
                    },
                };
                Ok(FaultRule {
                    op,
                    path_contains,
                    action,
                    remaining,
                })
            })
            .collect()
    }
}

/// The decorator. Clone the `Arc` to keep a handle for changing rules.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rules: Rules,
    /// Multipart uploads started and neither completed nor aborted.
    open_uploads: Arc<AtomicUsize>,
}

type Rules = Arc<Mutex<Vec<FaultRule>>>;

/// The first live rule for `op` on `path`, counted down.
fn matching(rules: &Rules, op: FaultOp, path: &str) -> Option<FaultAction> {
    let mut rules = rules.lock().unwrap();
    let rule = rules.iter_mut().find(|r| {
        let hit = match r.path_contains.strip_suffix('$') {
            Some(suffix) => path.ends_with(suffix),
            None => path.contains(&r.path_contains),
        };
        (r.op == op || r.op == FaultOp::Any) && hit && r.remaining != Some(0)
    })?;
    if let Some(n) = rule.remaining.as_mut() {
        *n -= 1;
    }
    Some(rule.action)
}

fn injected(op: FaultOp, path: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected {op:?} failure on {path}").into(),
    }
}

/// A multipart upload whose parts the rules can fail or delay.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    rules: Rules,
    path: Path,
    open_uploads: Arc<AtomicUsize>,
    open: bool,
}

impl FaultyUpload {
    fn settled(&mut self) {
        if std::mem::take(&mut self.open) {
            self.open_uploads.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        match matching(&self.rules, FaultOp::Part, self.path.as_ref()) {
            None => self.inner.put_part(data),
            Some(FaultAction::Fail) => {
                let e = injected(FaultOp::Part, &self.path);
                Box::pin(async move { Err(e) })
            }
            Some(FaultAction::FailAfter) => {
                let part = self.inner.put_part(data);
                let e = injected(FaultOp::Part, &self.path);
                Box::pin(async move {
                    part.await?;
                    Err(e)
                })
            }
            Some(FaultAction::Delay(d)) => {
                let part = self.inner.put_part(data);
                Box::pin(async move {
                    tokio::time::sleep(d).await;
                    part.await
                })
            }
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await;
        self.settled();
        r
    }

    async fn abort(&mut self) -> Result<()> {
        let r = self.inner.abort().await;
        self.settled();
        r
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rules: Arc::new(Mutex::new(Vec::new())),
            open_uploads: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Multipart uploads started and neither completed nor aborted (on S3,
    /// each would keep hidden parts until a lifecycle rule removes them).
    pub fn open_multipart_uploads(&self) -> usize {
        self.open_uploads.load(Ordering::SeqCst)
    }

    pub fn add_rule(&self, rule: FaultRule) {
        self.rules.lock().unwrap().push(rule);
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Runs `run` under the rules for `op` on `path`.
    async fn with<T, F>(&self, op: FaultOp, path: &Path, run: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        match matching(&self.rules, op, path.as_ref()) {
            None => run.await,
            Some(FaultAction::Delay(d)) => {
                tokio::time::sleep(d).await;
                run.await
            }
            Some(FaultAction::Fail) => Err(injected(op, path)),
            Some(FaultAction::FailAfter) => {
                run.await?;
                Err(injected(op, path))
            }
        }
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.with(
            FaultOp::Put,
            location,
            self.inner.put_opts(location, payload, opts),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self
            .with(
                FaultOp::Put,
                location,
                self.inner.put_multipart_opts(location, opts),
            )
            .await?;
        self.open_uploads.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FaultyUpload {
            inner,
            rules: self.rules.clone(),
            path: location.clone(),
            open_uploads: self.open_uploads.clone(),
            open: true,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.with(
            FaultOp::Get,
            location,
            self.inner.get_opts(location, options),
        )
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.with(
            FaultOp::Get,
            location,
            self.inner.get_ranges(location, ranges),
        )
        .await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.with(FaultOp::Head, location, self.inner.head(location))
            .await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.with(FaultOp::Delete, location, self.inner.delete(location))
            .await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        use futures::StreamExt;
        let action = prefix.and_then(|p| matching(&self.rules, FaultOp::List, p.as_ref()));
        let inner = self.inner.list(prefix);
        match action {
            None => inner,
            Some(FaultAction::Fail) => {
                let err = object_store::Error::Generic {
                    store: "FaultyStore",
                    source: "injected List failure".into(),
                };
                Box::pin(futures::stream::once(async move { Err(err) }))
            }
            // The listing starts after the delay.
            Some(FaultAction::Delay(d)) => Box::pin(
                futures::stream::once(async move {
                    tokio::time::sleep(d).await;
                    inner
                })
                .flatten(),
            ),
            Some(FaultAction::FailAfter) => {
                let err = object_store::Error::Generic {
                    store: "FaultyStore",
                    source: "injected List failure".into(),
                };
                Box::pin(inner.chain(futures::stream::once(async move { Err(err) })))
            }
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        match prefix {
            Some(p) => {
                self.with(FaultOp::List, p, self.inner.list_with_delimiter(prefix))
                    .await
            }
            None => self.inner.list_with_delimiter(prefix).await,
        }
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.with(FaultOp::Put, to, self.inner.copy(from, to)).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.with(FaultOp::Put, to, self.inner.copy_if_not_exists(from, to))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn rules_parse() {
        let r = FaultRule::parse_list("put:/chk-3/:delay=50; get:shared/:fail*2").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].action, FaultAction::Delay(Duration::from_millis(50)));
        assert_eq!((r[1].op, r[1].remaining), (FaultOp::Get, Some(2)));
        assert!(FaultRule::parse_list("zap:x:fail").is_err());
        assert!(FaultRule::parse_list("put:x:boom").is_err());
    }

    #[tokio::test]
    async fn rules_fire_the_given_number_of_times() {
        let store = FaultyStore::new(Arc::new(InMemory::new()));
        store.add_rule(FaultRule {
            op: FaultOp::Put,
            path_contains: "chk-1/".into(),
            action: FaultAction::Fail,
            remaining: Some(1),
        });
        let p = Path::from("a/chk-1/x");
        assert!(store.put(&p, PutPayload::from_static(b"1")).await.is_err());
        assert!(store.put(&p, PutPayload::from_static(b"1")).await.is_ok());
        assert!(store
            .put(&Path::from("b"), PutPayload::from_static(b"1"))
            .await
            .is_ok());
    }
}
