//! Return types: `lockattr::Error`, `anyhow::Result`, a user error enum (`thiserror` and by
//! hand) with `From<lockattr::Error>`, and a crate-local `Result` alias.

#![deny(warnings)]

use lockattr::distributed_lock;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("busy")]
    Lock(#[from] lockattr::Error),
    #[error("bad input: {0}")]
    BadInput(String),
}

#[derive(Debug)]
pub enum HandError {
    Lock(lockattr::Error),
    Io(std::io::Error),
}

impl From<lockattr::Error> for HandError {
    fn from(e: lockattr::Error) -> Self {
        HandError::Lock(e)
    }
}

impl From<std::io::Error> for HandError {
    fn from(e: std::io::Error) -> Self {
        HandError::Io(e)
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[distributed_lock(key = "plain")]
async fn plain() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock(key = "anyhow:<n>")]
async fn with_anyhow(n: &str) -> anyhow::Result<u32> {
    let parsed: u32 = n.parse()?;
    anyhow::ensure!(parsed > 0, "zero");
    Ok(parsed)
}

#[distributed_lock(key = "enum:<n>")]
async fn with_enum(n: i32) -> Result<i32, AppError> {
    if n < 0 {
        return Err(AppError::BadInput(n.to_string()));
    }
    Ok(n)
}

#[distributed_lock(key = "hand")]
async fn with_hand_written() -> Result<Vec<u8>, HandError> {
    let bytes =
        std::fs::read("/definitely/not/here").or_else(|_| Ok::<_, std::io::Error>(vec![]))?;
    Ok(bytes)
}

#[distributed_lock(key = "alias:<id>")]
async fn with_alias(id: u64) -> AppResult<u64> {
    Ok(id)
}

#[distributed_lock(key = "boxed")]
async fn boxed() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

fn main() {
    let _ = (
        plain(),
        with_anyhow("1"),
        with_enum(1),
        with_hand_written(),
        with_alias(1),
        boxed(),
    );
}
