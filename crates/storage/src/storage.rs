//! [`CheckpointStorage`]: the operations on the layout of [`crate::paths`].
//!
//! Invariants kept here:
//! - State files and `_metadata` are written create-only (`PutMode::Create`):
//!   an immutable object is never overwritten.
//! - A checkpoint is restorable iff its `_metadata` exists and verifies.
//! - Deleting a checkpoint removes `_metadata` first, so a crash half-way
//!   leaves a non-restorable folder (swept later), never a restorable
//!   checkpoint with missing files.
//! - Downloads check size and CRC32C of every file against the metadata.

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use cutpoint_core::{
    checksum, CheckpointId, CheckpointMetadata, JobId, JobSpec, OperatorId, SavepointId, StateFile,
    SubtaskIndex,
};
use futures::{StreamExt, TryStreamExt};
use object_store::{
    path::Path, MultipartUpload, ObjectStore, PutMode, PutOptions, PutPayload, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use crate::paths::{self, parse_checkpoint_dir, JobPaths, StateScope, METADATA_NAME};
use crate::{StorageError, StorageLocation};

/// Files larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
const MULTIPART_CHUNK: usize = 8 * 1024 * 1024;
const MULTIPART_CONCURRENCY: usize = 4;
/// Parallel deletes.
const DELETE_CONCURRENCY: usize = 8;

/// A multipart upload that is aborted if it is dropped neither completed
/// nor aborted (the future driving it was cancelled): the abort runs on the
/// current runtime.
#[derive(Debug)]
struct AbortOnDrop {
    inner: Option<Box<dyn MultipartUpload>>,
    settled: bool,
}

impl AbortOnDrop {
    fn inner(&mut self) -> &mut Box<dyn MultipartUpload> {
        self.inner.as_mut().expect("present until dropped")
    }
}

#[async_trait::async_trait]
impl MultipartUpload for AbortOnDrop {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        self.inner().put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
        let r = self.inner().complete().await;
        self.settled = r.is_ok();
        r
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.settled = true;
        self.inner().abort().await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take().filter(|_| !self.settled) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move {
                let _ = inner.abort().await;
            })),
            Err(_) => {
                tracing::warn!("an unfinished multipart upload could not be aborted (no runtime)")
            }
        }
    }
}

/// Checkpoint ids one writer lease grants.
pub const IDS_PER_LEASE: u64 = 1000;

/// A writer's hold on a job (`_writer/{epoch}`): its epoch, and the
/// checkpoint ids it may use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriterLease {
    pub epoch: u64,
    pub first_id: u64,
    pub last_id: u64,
    /// Who took it (for people reading storage).
    pub pid: u32,
    pub taken_ms: u64,
    /// Unique to this lease: how a writer recognises its own lease when
    /// the answer to its create was lost.
    #[serde(default)]
    pub nonce: String,
}

impl WriterLease {
    fn new(epoch: u64, first_id: u64) -> Self {
        WriterLease {
            epoch,
            first_id,
            last_id: first_id + IDS_PER_LEASE - 1,
            pid: std::process::id(),
            taken_ms: cutpoint_core::now_millis(),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

/// An object of a job, for the orphan sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobObject {
    /// Path relative to the job folder.
    pub path: String,
    /// Last modification, ms since the epoch.
    pub last_modified_ms: u64,
    pub size: u64,
}

/// A checkpoint folder found in storage and what its metadata says.
#[derive(Debug)]
pub struct CheckpointListing {
    pub checkpoint_id: CheckpointId,
    /// `Ok` if restorable; the error says why not.
    pub metadata: Result<CheckpointMetadata, StorageError>,
    pub external_path: String,
}

/// What storage holds for a job, against what its checkpoints reference
/// (`cutpoint checkpoints usage`, the chaos harness's leak check).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JobUsage {
    pub objects: usize,
    pub bytes: u64,
    /// Restorable checkpoints (their `_metadata` verifies), oldest first.
    pub checkpoints: Vec<CheckpointId>,
    /// Checkpoint folders with an unreadable `_metadata`, and why.
    pub unreadable: Vec<String>,
    /// Objects besides `job.json` and the writer epochs that no restorable
    /// checkpoint references:
    /// uploads in flight, or leftovers the orphan sweep removes once older
    /// than the checkpoint timeout (unreadable checkpoints' files included).
    pub unreferenced: Vec<String>,
    pub unreferenced_bytes: u64,
    /// Files a restorable checkpoint names that storage does not hold.
    pub missing: Vec<String>,
    /// Shared files are not deleted while an unreadable checkpoint exists
    /// (it may reference any of them); this says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_gc_suspended: Option<String>,
}

/// Checkpoint storage of one location (all jobs under one root).
#[derive(Debug, Clone)]
pub struct CheckpointStorage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
}

impl CheckpointStorage {
    pub fn new(location: StorageLocation) -> Self {
        Self {
            store: location.store,
            root: location.root,
            url: location.url,
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The same storage (root, location) through another store, e.g. a
    /// [`crate::faults::FaultyStore`] wrapping this one's.
    pub fn with_store(&self, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            root: self.root.clone(),
            url: self.url.clone(),
        }
    }

    pub fn paths(&self, job: &JobId) -> JobPaths {
        JobPaths::new(&self.root, job)
    }

    /// User-facing location of a checkpoint folder (Flink's `external_path`).
    pub fn external_path(&self, job: &JobId, id: CheckpointId) -> String {
        format!(
            "{}/jobs/{job}/{}",
            self.url,
            cutpoint_core::layout::checkpoint_dir(id)
        )
    }

    // ---- job spec -------------------------------------------------------

    /// Stores the job spec beside its checkpoints (mutable: replaced when a
    /// job with the same id is run again).
    pub async fn write_job_spec(&self, spec: &JobSpec) -> Result<(), StorageError> {
        let path = self.paths(&spec.job_id).job_spec();
        let body = serde_json::to_vec_pretty(spec).expect("spec serializes");
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| StorageError::store("put", &path, e))?;
        Ok(())
    }

    pub async fn read_job_spec(&self, job: &JobId) -> Result<JobSpec, StorageError> {
        let path = self.paths(job).job_spec();
        let bytes =
            self.get_optional(&path)
                .await?
                .ok_or_else(|| StorageError::JobSpecMissing {
                    job: job.to_string(),
                })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| StorageError::CorruptJobSpec {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        JobSpec::from_json(text).map_err(|e| StorageError::CorruptJobSpec {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// Job ids that have a folder in storage.
    pub async fn list_jobs(&self) -> Result<Vec<JobId>, StorageError> {
        let prefix = JobPaths::jobs_root(&self.root);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| StorageError::store("list", &prefix, e))?;
        let mut jobs: Vec<JobId> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| JobId::new(n).ok()))
            .collect();
        jobs.sort();
        Ok(jobs)
    }

    // ---- one writer per job ----------------------------------------------

    /// The writer epochs present for `job`, ascending.
    pub async fn writer_epochs(&self, job: &JobId) -> Result<Vec<u64>, StorageError> {
        let dir = self.paths(job).writers_dir();
        let mut epochs: Vec<u64> = self
            .list_prefix(&dir)
            .await?
            .iter()
            .filter_map(|p| p.filename().and_then(paths::parse_writer_epoch))
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// Takes the job's storage for this process (one writer per job):
    /// creates `_writer/{e}` create-only for the next epoch `e` above every
    /// one present (if another writer creates it first, the next one).
    /// Older epochs are fenced from then on: [`Self::check_writer`] refuses
    /// them. The object records the checkpoint ids the lease grants:
    /// [`IDS_PER_LEASE`] of them from above both `min_first_id` and every id
    /// an earlier lease granted, so ids never repeat, even after a crash
    /// that left no trace of the last ones.
    pub async fn take_writer_lease(
        &self,
        job: &JobId,
        min_first_id: u64,
    ) -> Result<WriterLease, StorageError> {
        loop {
            let newest = self.newest_lease(job).await?;
            let epoch = newest.as_ref().map_or(1, |l| l.epoch + 1);
            let first = newest.map_or(0, |l| l.last_id + 1).max(min_first_id).max(1);
            let lease = WriterLease::new(epoch, first);
            match self.create_lease(job, &lease).await {
                Ok(()) => return Ok(lease),
                Err(StorageError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renews `lease` when its ids run out: the next epoch, with the next
    /// ids, only if no other writer took the job meanwhile (else
    /// [`StorageError::Fenced`]: a fenced writer never fences the new one).
    /// A create whose answer was lost (a timeout, or `AlreadyExists` on the
    /// retry of a PUT that landed) is read back: the lease is ours if it
    /// carries our nonce.
    pub async fn renew_writer_lease(
        &self,
        job: &JobId,
        lease: WriterLease,
        min_first_id: u64,
    ) -> Result<WriterLease, StorageError> {
        self.check_writer(job, lease.epoch).await?;
        let first = (lease.last_id + 1).max(min_first_id);
        let new = WriterLease::new(lease.epoch + 1, first);
        let Err(e) = self.create_lease(job, &new).await else {
            return Ok(new);
        };
        let path = self.paths(job).writer_epoch(new.epoch);
        match self.get_optional(&path).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<WriterLease>(&bytes) {
                Ok(found) if found.nonce == new.nonce => Ok(new),
                _ => Err(StorageError::Fenced {
                    job: job.to_string(),
                    epoch: lease.epoch,
                    newer: new.epoch,
                }),
            },
            _ => Err(e),
        }
    }

    /// Writes a lease create-only, then (best effort) deletes the epochs
    /// below the previous one: fenced writers only need to see a newer one.
    async fn create_lease(&self, job: &JobId, lease: &WriterLease) -> Result<(), StorageError> {
        let path = self.paths(job).writer_epoch(lease.epoch);
        let body = serde_json::to_vec(lease).expect("lease serializes");
        self.put_create(&path, Bytes::from(body)).await?;
        match self.writer_epochs(job).await {
            Ok(epochs) => {
                for old in epochs.into_iter().filter(|e| e + 1 < lease.epoch) {
                    let _ = self.delete(&self.paths(job).writer_epoch(old)).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "old writer leases not pruned"),
        }
        Ok(())
    }

    /// The newest lease recorded for `job`, if any.
    async fn newest_lease(&self, job: &JobId) -> Result<Option<WriterLease>, StorageError> {
        let Some(epoch) = self.writer_epochs(job).await?.last().copied() else {
            return Ok(None);
        };
        let path = self.paths(job).writer_epoch(epoch);
        let Some(bytes) = self.get_optional(&path).await? else {
            // Replaced by a newer one between the listing and the read.
            return Box::pin(self.newest_lease(job)).await;
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageError::CorruptMetadata {
                path: path.to_string(),
                reason: e.to_string(),
            })
    }

    /// `Ok` while no writer took `job` after epoch `epoch`; else
    /// [`StorageError::Fenced`]. Checked before publishing and deleting.
    pub async fn check_writer(&self, job: &JobId, epoch: u64) -> Result<(), StorageError> {
        match self.writer_epochs(job).await?.last() {
            Some(&newer) if newer > epoch => Err(StorageError::Fenced {
                job: job.to_string(),
                epoch,
                newer,
            }),
            _ => Ok(()),
        }
    }

    // ---- state files ----------------------------------------------------

    /// Uploads bytes as a state file, create-only, and returns its handle.
    pub async fn put_state_file(
        &self,
        job: &JobId,
        scope: StateScope,
        operator: &OperatorId,
        subtask: SubtaskIndex,
        name: &str,
        data: Bytes,
    ) -> Result<StateFile, StorageError> {
        let relative = JobPaths::state_file_relative(scope, operator, subtask, name);
        let path = self.paths(job).resolve(&relative);
        let handle = StateFile {
            path: relative,
            local_name: name.to_string(),
            size: data.len() as u64,
            crc32c: checksum::crc32c(&data),
        };
        self.put_create(&path, data).await?;
        Ok(handle)
    }

    /// Uploads a local file as `remote_name` in `scope` and returns its
    /// handle (`local_name` is the local file's name). Files up to
    /// [`MULTIPART_THRESHOLD`] go in one create-only put; larger ones as a
    /// multipart upload (object stores offer no create-only multipart
    /// completion through `object_store`; names are unique per checkpoint or
    /// random, so nothing is overwritten either way).
    pub async fn upload_file(
        &self,
        job: &JobId,
        scope: StateScope,
        operator: &OperatorId,
        subtask: SubtaskIndex,
        local: &FsPath,
        remote_name: &str,
    ) -> Result<StateFile, StorageError> {
        cutpoint_core::failpoint::check("snapshot::upload")?;
        let io = |source| StorageError::Io {
            path: local.display().to_string(),
            source,
        };
        let local_name = local
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io(std::io::Error::other("file name is not UTF-8")))?
            .to_string();
        let relative = JobPaths::state_file_relative(scope, operator, subtask, remote_name);
        let path = self.paths(job).resolve(&relative);
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let crc = if size <= MULTIPART_THRESHOLD {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data).await.map_err(io)?;
            let crc = checksum::crc32c(&data);
            self.put_create(&path, Bytes::from(data)).await?;
            crc
        } else {
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| StorageError::store("put", &path, e))?;
            // Aborted if dropped unfinished (this future cancelled half-way,
            // in any step), so no hidden parts stay behind on S3.
            let upload = Box::new(AbortOnDrop {
                inner: Some(upload),
                settled: false,
            });
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
            let mut crc = 0u32;
            let mut buf = vec![0u8; MULTIPART_CHUNK];
            let streamed: Result<(), StorageError> = async {
                loop {
                    let n = file.read(&mut buf).await.map_err(io)?;
                    if n == 0 {
                        // Every part landed (or the upload is aborted below).
                        return writer
                            .wait_for_capacity(0)
                            .await
                            .map_err(|e| StorageError::store("put", &path, e));
                    }
                    crc = checksum::crc32c_append(crc, &buf[..n]);
                    writer
                        .wait_for_capacity(MULTIPART_CONCURRENCY)
                        .await
                        .map_err(|e| StorageError::store("put", &path, e))?;
                    writer.write(&buf[..n]);
                }
            }
            .await;
            if let Err(e) = streamed {
                // Do not leave an unfinished multipart upload behind.
                let _ = writer.abort().await;
                return Err(e);
            }
            writer
                .finish()
                .await
                .map_err(|e| StorageError::store("put", &path, e))?;
            crc
        };
        Ok(StateFile {
            path: relative,
            local_name,
            size,
            crc32c: crc,
        })
    }

    /// Downloads a state file into `dir/{local_name}`, verifying size and
    /// CRC32C. A missing or corrupt file is a named error naming the file.
    pub async fn download_verified(
        &self,
        job: &JobId,
        file: &StateFile,
        dir: &FsPath,
    ) -> Result<(), StorageError> {
        cutpoint_core::failpoint::check("restore::download")?;
        let path = self.paths(job).resolve(&file.path);
        let data =
            self.get_optional(&path)
                .await?
                .ok_or_else(|| StorageError::StateFileMissing {
                    path: path.to_string(),
                })?;
        let crc = checksum::crc32c(&data);
        if data.len() as u64 != file.size || crc != file.crc32c {
            return Err(StorageError::ChecksumMismatch {
                path: path.to_string(),
                expected_size: file.size,
                expected_crc: file.crc32c,
                actual_size: data.len() as u64,
                actual_crc: crc,
            });
        }
        let target = dir.join(&file.local_name);
        tokio::fs::write(&target, &data)
            .await
            .map_err(|source| StorageError::Io {
                path: target.display().to_string(),
                source,
            })
    }

    // ---- metadata -------------------------------------------------------

    /// Publishes a checkpoint: writes `_metadata`, create-only. This is the
    /// commit point; everything the metadata names must already be stored.
    pub async fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<(), StorageError> {
        let path = self.paths(&meta.job_id).metadata(meta.checkpoint_id);
        let body = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        self.put_create(&path, Bytes::from(body)).await
    }

    /// Reads and verifies a checkpoint's metadata.
    pub async fn read_metadata(
        &self,
        job: &JobId,
        id: CheckpointId,
    ) -> Result<CheckpointMetadata, StorageError> {
        let missing = || StorageError::MetadataMissing {
            job: job.to_string(),
            checkpoint: id.0,
        };
        self.read_metadata_at(&self.paths(job).metadata(id), missing, |m| {
            m.verify(job, id)
        })
        .await
    }

    /// Ids of every `chk-{n}` folder of a job, complete or not, ascending.
    pub async fn checkpoint_dirs(&self, job: &JobId) -> Result<Vec<CheckpointId>, StorageError> {
        let prefix = self.paths(job).job_root().clone();
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| StorageError::store("list", &prefix, e))?;
        let mut ids: Vec<_> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(parse_checkpoint_dir))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every checkpoint folder that has a `_metadata` object, newest first,
    /// with the metadata read and verified (or the reason it is unusable).
    pub async fn list_checkpoints(
        &self,
        job: &JobId,
    ) -> Result<Vec<CheckpointListing>, StorageError> {
        let paths = self.paths(job);
        let mut out = Vec::new();
        for id in self.checkpoint_dirs(job).await?.into_iter().rev() {
            let meta_path = paths.metadata(id);
            match self.store.head(&meta_path).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(StorageError::store("head", &meta_path, e)),
            }
            out.push(CheckpointListing {
                checkpoint_id: id,
                metadata: self.read_metadata(job, id).await,
                external_path: self.external_path(job, id),
            });
        }
        Ok(out)
    }

    /// Every object path under a checkpoint folder.
    pub async fn list_checkpoint_objects(
        &self,
        job: &JobId,
        id: CheckpointId,
    ) -> Result<Vec<Path>, StorageError> {
        let prefix = self.paths(job).checkpoint_dir(id);
        self.list_prefix(&prefix).await
    }

    /// Every object path under a prefix (recursive).
    pub async fn list_prefix(&self, prefix: &Path) -> Result<Vec<Path>, StorageError> {
        self.store
            .list(Some(prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| StorageError::store("list", prefix, e))
    }

    /// Every object of a job (recursive), relative to the job folder.
    pub async fn list_job_objects(&self, job: &JobId) -> Result<Vec<String>, StorageError> {
        let paths = self.paths(job);
        let all = self.list_prefix(paths.job_root()).await?;
        Ok(all.iter().filter_map(|p| paths.relative(p)).collect())
    }

    /// Deletes a checkpoint folder: `_metadata` first, then the rest.
    /// Deleting what is already gone succeeds.
    pub async fn delete_checkpoint(
        &self,
        job: &JobId,
        id: CheckpointId,
    ) -> Result<(), StorageError> {
        let meta = self.paths(job).metadata(id);
        self.delete(&meta).await?;
        for path in self.list_checkpoint_objects(job, id).await? {
            if path.filename() != Some(METADATA_NAME) {
                self.delete(&path).await?;
            }
        }
        Ok(())
    }

    /// Deletes one state file by its relative path (missing is fine).
    pub async fn delete_state_file(&self, job: &JobId, relative: &str) -> Result<(), StorageError> {
        let path = self.paths(job).resolve(relative);
        self.delete(&path).await
    }

    /// Size of a state file by relative path; `None` if it does not exist.
    pub async fn object_size(
        &self,
        job: &JobId,
        relative: &str,
    ) -> Result<Option<u64>, StorageError> {
        let path = self.paths(job).resolve(relative);
        match self.store.head(&path).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store("head", &path, e)),
        }
    }

    /// Deletes state files by relative path, in parallel; missing is fine.
    pub async fn delete_state_files(
        &self,
        job: &JobId,
        relative: &[String],
    ) -> Result<(), StorageError> {
        let deletes: Vec<_> = relative
            .iter()
            .map(|r| self.delete_state_file(job, r))
            .collect();
        futures::stream::iter(deletes)
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// What storage holds for `job` against what its checkpoints reference.
    pub async fn usage(&self, job: &JobId) -> Result<JobUsage, StorageError> {
        let objects = self.list_job_objects_detailed(job).await?;
        use cutpoint_core::layout;
        let mut referenced = std::collections::BTreeSet::from([layout::JOB_SPEC.to_string()]);
        for e in self.writer_epochs(job).await? {
            referenced.insert(layout::writer_lease(e));
        }
        let mut usage = JobUsage {
            objects: objects.len(),
            bytes: objects.iter().map(|o| o.size).sum(),
            ..Default::default()
        };
        for l in self.list_checkpoints(job).await?.into_iter().rev() {
            match l.metadata {
                Ok(m) => {
                    usage.checkpoints.push(m.checkpoint_id);
                    referenced.insert(paths::metadata_relative(m.checkpoint_id));
                    referenced.extend(m.files().map(|f| f.path.clone()));
                }
                Err(e) => usage.unreadable.push(format!(
                    "{}: {e}",
                    cutpoint_core::layout::checkpoint_dir(l.checkpoint_id)
                )),
            }
        }
        let present: std::collections::BTreeSet<&str> =
            objects.iter().map(|o| o.path.as_str()).collect();
        for o in &objects {
            if !referenced.contains(&o.path) {
                usage.unreferenced.push(o.path.clone());
                usage.unreferenced_bytes += o.size;
            }
        }
        if !usage.unreadable.is_empty() {
            usage.shared_gc_suspended = Some(format!(
                "{} checkpoint(s) with unreadable _metadata may reference shared files: none is deleted until they are readable or removed",
                usage.unreadable.len()
            ));
        }
        usage.missing = referenced
            .into_iter()
            .filter(|r| {
                r != layout::JOB_SPEC
                    && !r.starts_with(layout::WRITERS_DIR)
                    && !present.contains(r.as_str())
            })
            .collect();
        Ok(usage)
    }

    /// Every object of a job with its age and size (for the orphan sweep).
    pub async fn list_job_objects_detailed(
        &self,
        job: &JobId,
    ) -> Result<Vec<JobObject>, StorageError> {
        let paths = self.paths(job);
        let prefix = paths.job_root().clone();
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| StorageError::store("list", &prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                Some(JobObject {
                    path: paths.relative(&m.location)?,
                    last_modified_ms: m.last_modified.timestamp_millis().max(0) as u64,
                    size: m.size,
                })
            })
            .collect())
    }

    // ---- savepoints ------------------------------------------------------

    /// User-facing location of a savepoint.
    pub fn savepoint_path(&self, id: &SavepointId) -> String {
        format!("{}/savepoints/{id}", self.url)
    }

    /// The savepoint `path` names — as [`Self::savepoint_path`] prints it,
    /// or a plain local path — if it lies in this storage's savepoints.
    pub fn savepoint_at(&self, path: &str) -> Result<SavepointId, StorageError> {
        let trimmed = path.trim_end_matches('/');
        let elsewhere = || StorageError::SavepointElsewhere {
            path: path.to_string(),
            root: self.url.clone(),
        };
        let (_, name) = trimmed.rsplit_once('/').ok_or_else(elsewhere)?;
        let id = SavepointId::new(name).map_err(|_| elsewhere())?;
        let full = if trimmed.starts_with('/') {
            format!("file://{trimmed}")
        } else {
            trimmed.to_string()
        };
        if full != self.savepoint_path(&id) {
            return Err(elsewhere());
        }
        Ok(id)
    }

    fn savepoint_file(&self, id: &SavepointId, relative: &str) -> Path {
        JobPaths::savepoint_file(&self.root, id, relative)
    }

    /// Copies a completed checkpoint into `savepoints/{id}/`: self-contained
    /// (every file copied, shared ones too), owned by the user, never touched
    /// by retention or GC. `_metadata` is written last, create-only. If the
    /// copy fails, the partial folder is deleted; an existing savepoint of
    /// that id is never overwritten.
    pub async fn create_savepoint(
        &self,
        meta: &CheckpointMetadata,
        id: &SavepointId,
    ) -> Result<String, StorageError> {
        let root = JobPaths::savepoint_root(&self.root, id);
        if !self.list_prefix(&root).await?.is_empty() {
            return Err(StorageError::AlreadyExists {
                path: root.to_string(),
            });
        }
        match self.copy_to_savepoint(meta, id).await {
            Ok(path) => Ok(path),
            Err(e) => {
                for p in self.list_prefix(&root).await.unwrap_or_default() {
                    let _ = self.delete(&p).await;
                }
                Err(e)
            }
        }
    }

    async fn copy_to_savepoint(
        &self,
        meta: &CheckpointMetadata,
        id: &SavepointId,
    ) -> Result<String, StorageError> {
        let job_paths = self.paths(&meta.job_id);
        let mut copy = meta.clone();
        for f in copy.subtasks.iter_mut().flat_map(|s| s.all_files_mut()) {
            let relative = cutpoint_core::layout::in_savepoint(&f.state_path().map_err(|e| {
                StorageError::CorruptMetadata {
                    path: f.path.clone(),
                    reason: e.to_string(),
                }
            })?);
            let (from, to) = (
                job_paths.resolve(&f.path),
                self.savepoint_file(id, &relative),
            );
            self.store
                .copy(&from, &to)
                .await
                .map_err(|e| StorageError::store("copy", &from, e))?;
            f.path = relative;
        }
        let body = serde_json::to_vec_pretty(&copy).expect("metadata serializes");
        self.put_create(&self.savepoint_file(id, METADATA_NAME), Bytes::from(body))
            .await?;
        Ok(self.savepoint_path(id))
    }

    /// Reads and verifies a savepoint's metadata (paths relative to it).
    pub async fn read_savepoint(
        &self,
        id: &SavepointId,
    ) -> Result<CheckpointMetadata, StorageError> {
        let missing = || StorageError::SavepointMissing { id: id.to_string() };
        self.read_metadata_at(
            &self.savepoint_file(id, METADATA_NAME),
            missing,
            CheckpointMetadata::verify_savepoint,
        )
        .await
    }

    /// Imports a savepoint as checkpoint `id` of `job` (copying its files
    /// under `chk-{id}/`), so a restore from it is an ordinary restore.
    pub async fn import_savepoint(
        &self,
        savepoint: &SavepointId,
        job: &JobId,
        id: CheckpointId,
    ) -> Result<CheckpointMetadata, StorageError> {
        let mut meta = self.read_savepoint(savepoint).await?;
        let job_paths = self.paths(job);
        for f in meta.subtasks.iter_mut().flat_map(|s| s.all_files_mut()) {
            let target = cutpoint_core::layout::imported(&f.path, id).map_err(|e| {
                StorageError::CorruptMetadata {
                    path: f.path.clone(),
                    reason: e.to_string(),
                }
            })?;
            let (from, to) = (
                self.savepoint_file(savepoint, &f.path),
                job_paths.resolve(&target),
            );
            self.store
                .copy(&from, &to)
                .await
                .map_err(|e| StorageError::store("copy", &from, e))?;
            f.path = target;
        }
        meta.job_id = job.clone();
        meta.checkpoint_id = id;
        meta.checkpoint_type = cutpoint_core::CheckpointType::Full;
        for s in &mut meta.subtasks {
            s.checkpointed_size = 0;
        }
        self.write_metadata(&meta).await?;
        Ok(meta)
    }

    /// Savepoints in storage with their metadata (or why it is unusable).
    pub async fn list_savepoints(
        &self,
    ) -> Result<Vec<(SavepointId, Result<CheckpointMetadata, StorageError>)>, StorageError> {
        let prefix = JobPaths::savepoints_root(&self.root);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| StorageError::store("list", &prefix, e))?;
        let mut out = Vec::new();
        for id in listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| SavepointId::new(n).ok()))
        {
            let meta = self.read_savepoint(&id).await;
            out.push((id, meta));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    // ---- primitives -----------------------------------------------------

    async fn put_create(&self, path: &Path, data: Bytes) -> Result<(), StorageError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(path, PutPayload::from(data), opts)
            .await
            .map_err(|e| StorageError::store("put", path, e))?;
        Ok(())
    }

    /// The object's bytes, or `None` if it does not exist.
    async fn get_optional(&self, path: &Path) -> Result<Option<Bytes>, StorageError> {
        match self.get(path).await {
            Ok(b) => Ok(Some(b)),
            Err(StorageError::ObjectStore {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads metadata at `path`: `missing()` if absent; `CorruptMetadata`
    /// naming the path if it does not parse or `verify` rejects it.
    async fn read_metadata_at(
        &self,
        path: &Path,
        missing: impl FnOnce() -> StorageError,
        verify: impl FnOnce(&CheckpointMetadata) -> Result<(), cutpoint_core::CoreError>,
    ) -> Result<CheckpointMetadata, StorageError> {
        let bytes = self.get_optional(path).await?.ok_or_else(missing)?;
        let corrupt = |reason: String| StorageError::CorruptMetadata {
            path: path.to_string(),
            reason,
        };
        let meta: CheckpointMetadata =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        verify(&meta).map_err(|e| corrupt(e.to_string()))?;
        Ok(meta)
    }

    async fn get(&self, path: &Path) -> Result<Bytes, StorageError> {
        let result = self
            .store
            .get(path)
            .await
            .map_err(|e| StorageError::store("get", path, e))?;
        result
            .bytes()
            .await
            .map_err(|e| StorageError::store("get", path, e))
    }

    async fn delete(&self, path: &Path) -> Result<(), StorageError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::store("delete", path, e)),
        }
    }
}
