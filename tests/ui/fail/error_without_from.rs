use lockattr::distributed_lock;

#[derive(Debug)]
pub enum AppError {
    NotFound,
}

#[distributed_lock(key = "party:<id>")]
async fn no_conversion(id: i64) -> Result<i64, AppError> {
    if id < 0 {
        return Err(AppError::NotFound);
    }
    Ok(id)
}

fn main() {}
