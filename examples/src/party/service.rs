//! The party service: create parties, join them, look at them.

use std::time::Duration;

use lockattr::distributed_lock;
use serde::{Deserialize, Serialize};

use super::db::Db;
use super::error::AppError;

/// Longest accepted party or participant name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// A party as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// How many participants it admits.
    pub capacity: i64,
}

/// A party with its participants, as `GET /parties/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyView {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// How many participants it admits.
    pub capacity: i64,
    /// How many it has: more than `capacity` means it was overbooked.
    pub members: i64,
    /// The participants' names, in joining order.
    pub participants: Vec<String>,
}

/// A participant who joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Its id.
    pub id: i64,
    /// The party joined.
    pub party_id: i64,
    /// The participant's name.
    pub name: String,
    /// The fencing token of the lock the join ran under; `None` for an unlocked join.
    pub fencing_token: Option<u64>,
}

/// The service. Cheap to share (`Db` is a pool handle); one per process.
#[derive(Debug, Clone)]
pub struct PartyService {
    db: Db,
    think: Duration,
}

impl PartyService {
    /// A service over `db`. `think` is a pause between the capacity check and the insert,
    /// standing in for the work a real service does there (pricing, validation, calls to other
    /// services); zero for none.
    pub fn new(db: Db, think: Duration) -> Self {
        PartyService { db, think }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The pause between check and insert.
    pub fn think(&self) -> Duration {
        self.think
    }

    /// Creates a party.
    ///
    /// # Errors
    /// `BadRequest` for an empty or long name or a negative capacity; `Db`.
    pub async fn create_party(&self, name: String, capacity: i64) -> Result<Party, AppError> {
        check_name("party name", &name)?;
        if capacity < 0 {
            return Err(AppError::BadRequest(format!(
                "capacity must not be negative (got {capacity})"
            )));
        }
        let id = self.db.insert_party(&name, capacity).await?;
        Ok(Party { id, name, capacity })
    }

    /// A party with its participants.
    ///
    /// # Errors
    /// `NotFound`; `Db`.
    pub async fn party(&self, id: i64) -> Result<PartyView, AppError> {
        let (name, capacity) = self.db.party(id).await?.ok_or(AppError::NotFound(id))?;
        let participants: Vec<String> = self
            .db
            .participants(id)
            .await?
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        Ok(PartyView {
            id,
            name,
            capacity,
            members: i64::try_from(participants.len()).unwrap_or(i64::MAX),
            participants,
        })
    }

    /// Joins a party, under the distributed lock `party:<party_id>`: at most one join per party
    /// runs at a time across every process sharing the Redis, so the check and the insert
    /// cannot interleave with another join's.
    ///
    /// Waits up to 100 s for the lock (a burst of joins queues behind it); the lease is 2 s and
    /// is renewed while the join runs, so a crashed process blocks the party for at most 2 s.
    ///
    /// # Errors
    /// `Full` (409), `NotFound` (404), `BadRequest` (400); `Lock` (503) when the lock could not
    /// be had within the wait, was lost, or Redis is unreachable; `Db`.
    #[distributed_lock(key = "party:<party_id>", wait = "100s", lease = "2s")]
    pub async fn participate(&self, party_id: i64, name: String) -> Result<Participant, AppError> {
        self.participate_unlocked(party_id, name).await
    }

    /// The same join without the lock: the check-then-insert as the original service had it.
    /// Concurrent calls for one party race and can overbook it.
    ///
    /// # Errors
    /// As [`participate`](Self::participate), minus the lock errors.
    pub async fn participate_unlocked(
        &self,
        party_id: i64,
        name: String,
    ) -> Result<Participant, AppError> {
        check_name("participant name", &name)?;
        // The check: two reads, no transaction, no row lock.
        let (_, capacity) = self
            .db
            .party(party_id)
            .await?
            .ok_or(AppError::NotFound(party_id))?;
        let members = self.db.count_participants(party_id).await?;
        if !self.think.is_zero() {
            tokio::time::sleep(self.think).await;
        }
        if members >= capacity {
            return Err(AppError::Full { party_id, capacity });
        }
        // The act: a separate statement, trusting the count read above.
        let id = self.db.insert_participant(party_id, &name).await?;
        // Under the lock, the join's fencing token (a lost lock is an error); none unlocked.
        let fencing_token = match lockattr::fencing_token().await {
            Ok(token) => Some(token),
            Err(lockattr::Error::NotInCriticalSection) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Participant {
            id,
            party_id,
            name,
            fencing_token,
        })
    }
}

fn check_name(what: &str, name: &str) -> Result<(), AppError> {
    if name.trim().is_empty() {
        return Err(AppError::BadRequest(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(AppError::BadRequest(format!(
            "{what} is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    Ok(())
}
