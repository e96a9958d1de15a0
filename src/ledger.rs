//! The ledger: the node's durable state that must survive a crash (payment channels with
//! their latest signed states, settlements, the wallet, payment ids, reputation), in a redb database
//! behind its own actor.
//!
//! The actor is a thread that owns the database. [`Ledger::commit`] hands it a batch of
//! writes and resolves once they are durable (redb's `Durability::Immediate`: the commit
//! has reached the disk). Commits that queue while one is being written are merged into the
//! next transaction (group commit), so many callers share one sync, and each still hears
//! back only after its own writes are on disk: persist-before-ack holds for every caller.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

/// The database file in the data dir.
pub const LEDGER_FILE: &str = "ledger.redb";

const CHANNELS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("channels");
const SETTLEMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("settlements");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const PAYMENT_IDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("payment_ids");
const WALLET_KEY: &str = "wallet";
const REPUTATION_KEY: &str = "reputation";

/// Most commits merged into one transaction.
pub const MAX_GROUP: usize = 256;
/// Commits that may wait for the writer.
const QUEUE: usize = 1024;

/// Errors of the ledger.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The database could not be opened, read or written.
    #[error("ledger {path}: {reason}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The ledger's thread has stopped.
    #[error("the ledger has stopped")]
    Stopped,
}

/// One durable write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A channel's record (its id, the encoded record).
    Channel(Vec<u8>, Vec<u8>),
    /// A settlement's record (the channel id, the encoded record).
    Settlement(Vec<u8>, Vec<u8>),
    /// The wallet (encoded).
    Wallet(Vec<u8>),
    /// The reputation table (encoded).
    Reputation(Vec<u8>),
    /// A payment id's record (the id, the encoded record).
    PaymentId(Vec<u8>, Vec<u8>),
    /// A payment id forgotten (the id).
    ForgetPaymentId(Vec<u8>),
}

/// Everything the ledger holds, read once at start.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// Every channel's record. (Settlement records are written for the record, not read
    /// back: the channel's own record says how it settled.)
    pub channels: Vec<Vec<u8>>,
    /// The wallet, if it was ever written.
    pub wallet: Option<Vec<u8>>,
    /// The reputation table, if it was ever written.
    pub reputation: Option<Vec<u8>>,
    /// Every payment id's record: `(id, record)`.
    pub payment_ids: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Commit {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), LedgerError>>,
}

/// A handle to the ledger's actor. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    commits: mpsc::Sender<Commit>,
}

impl Ledger {
    /// Opens (or creates) `<data_dir>/ledger.redb`, reads it whole, and starts the writer
    /// thread. The thread stops, closing the database, when every handle is dropped;
    /// [`LedgerThread::join`] waits for that.
    pub fn open(data_dir: &Path) -> Result<(Self, Loaded, LedgerThread), LedgerError> {
        let path = data_dir.join(LEDGER_FILE);
        let err = |e: &dyn std::fmt::Display| LedgerError::Storage {
            path: path.clone(),
            reason: e.to_string(),
        };
        let db = Database::create(&path).map_err(|e| err(&e))?;
        // Create the tables, so reading an empty ledger is uniform.
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(CHANNELS).map_err(|e| err(&e))?;
        tx.open_table(SETTLEMENTS).map_err(|e| err(&e))?;
        tx.open_table(META).map_err(|e| err(&e))?;
        tx.open_table(PAYMENT_IDS).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        let loaded = read_all(&db).map_err(|e| err(&e))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("ledger".into())
            .spawn(move || writer(db, path, rx))
            .map_err(|e| LedgerError::Storage {
                path: data_dir.join(LEDGER_FILE),
                reason: format!("cannot start the ledger thread: {e}"),
            })?;
        Ok((Self { commits: tx }, loaded, LedgerThread(thread)))
    }

    /// Makes `writes` durable, in one transaction (with whatever else is queued). Returns
    /// once they are on disk.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), LedgerError> {
        if writes.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.commits
            .send(Commit { writes, done })
            .await
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }
}

/// The ledger's writer thread.
#[derive(Debug)]
pub struct LedgerThread(std::thread::JoinHandle<()>);

impl LedgerThread {
    /// Waits until the thread has written everything and closed the database (once every
    /// [`Ledger`] handle is gone).
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.0.join()).await;
    }
}

fn read_all(db: &Database) -> Result<Loaded, redb::Error> {
    let tx = db.begin_read()?;
    let mut loaded = Loaded::default();
    for entry in tx.open_table(CHANNELS)?.iter()? {
        let (_, v) = entry?;
        loaded.channels.push(v.value().to_vec());
    }
    for entry in tx.open_table(PAYMENT_IDS)?.iter()? {
        let (k, v) = entry?;
        loaded
            .payment_ids
            .push((k.value().to_vec(), v.value().to_vec()));
    }
    let meta = tx.open_table(META)?;
    loaded.wallet = meta.get(WALLET_KEY)?.map(|v| v.value().to_vec());
    loaded.reputation = meta.get(REPUTATION_KEY)?.map(|v| v.value().to_vec());
    Ok(loaded)
}

fn writer(db: Database, path: PathBuf, mut rx: mpsc::Receiver<Commit>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let result = write_group(&db, &group).map_err(|e| LedgerError::Storage {
            path: path.clone(),
            reason: e.to_string(),
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "ledger commit failed");
        }
        for c in group {
            let _ = c.done.send(result.clone());
        }
    }
}

fn write_group(db: &Database, group: &[Commit]) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut channels = tx.open_table(CHANNELS)?;
        let mut settlements = tx.open_table(SETTLEMENTS)?;
        let mut meta = tx.open_table(META)?;
        let mut payment_ids = tx.open_table(PAYMENT_IDS)?;
        for write in group.iter().flat_map(|c| &c.writes) {
            match write {
                Write::Channel(id, record) => {
                    channels.insert(id.as_slice(), record.as_slice())?;
                }
                Write::Settlement(id, record) => {
                    settlements.insert(id.as_slice(), record.as_slice())?;
                }
                Write::Wallet(bytes) => {
                    meta.insert(WALLET_KEY, bytes.as_slice())?;
                }
                Write::Reputation(bytes) => {
                    meta.insert(REPUTATION_KEY, bytes.as_slice())?;
                }
                Write::PaymentId(id, record) => {
                    payment_ids.insert(id.as_slice(), record.as_slice())?;
                }
                Write::ForgetPaymentId(id) => {
                    payment_ids.remove(id.as_slice())?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_survive_reopening_and_later_writes_win() {
        let dir = tempfile::tempdir().unwrap();
        let thread = {
            let (ledger, loaded, thread) = Ledger::open(dir.path()).unwrap();
            assert!(loaded.channels.is_empty() && loaded.wallet.is_none());
            ledger
                .commit(vec![
                    Write::Channel(vec![1], b"one".to_vec()),
                    Write::Wallet(b"w1".to_vec()),
                ])
                .await
                .unwrap();
            let (a, b) = tokio::join!(
                ledger.commit(vec![Write::Channel(vec![1], b"two".to_vec())]),
                ledger.commit(vec![Write::Reputation(b"r".to_vec())]),
            );
            ledger
                .commit(vec![
                    Write::PaymentId(b"k1".to_vec(), b"one".to_vec()),
                    Write::PaymentId(b"k2".to_vec(), b"two".to_vec()),
                    Write::ForgetPaymentId(b"k1".to_vec()),
                ])
                .await
                .unwrap();
            a.unwrap();
            b.unwrap();
            thread
        };
        thread.join().await;
        let (_, loaded, _) = Ledger::open(dir.path()).unwrap();
        assert_eq!(loaded.channels, vec![b"two".to_vec()]);
        assert_eq!(loaded.wallet.as_deref(), Some(&b"w1"[..]));
        assert_eq!(loaded.reputation.as_deref(), Some(&b"r"[..]));
        assert_eq!(
            loaded.payment_ids,
            vec![(b"k2".to_vec(), b"two".to_vec())],
            "a forgotten id is gone, in the same transaction"
        );
    }
}
