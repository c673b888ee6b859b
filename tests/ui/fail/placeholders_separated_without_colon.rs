use lockattr::distributed_lock;

// Values escape `:` but not `-`: `("1-2", "3")` and `("1", "2-3")` would both render
// `pair:1-2-3`.
#[distributed_lock(key = "pair:<a>-<b>")]
async fn dash(a: &str, b: &str) -> Result<(), lockattr::Error> {
    let _ = (a, b);
    Ok(())
}

// Fields too; every such pair is reported.
pub struct Route {
    pub from: String,
    pub to: String,
    pub via: String,
}

#[distributed_lock(key = "route:<route.from>-to-<route.to>/via/<route.via>")]
async fn fields(route: &Route) -> Result<(), lockattr::Error> {
    let _ = route;
    Ok(())
}

fn main() {}
