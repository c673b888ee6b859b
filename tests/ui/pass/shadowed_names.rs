//! The generated code uses only absolute paths: user items named `core`, `std`, `lockattr`,
//! `Result`, `Option`, `Ok`, `Err`, `Some`, `None`, `Clone` or `Duration` do not change it.

#![deny(warnings)]
#![allow(
    dead_code,
    non_upper_case_globals,
    non_snake_case,
    non_camel_case_types
)]

mod shadowing {
    mod core {}
    mod std {}
    mod lockattr {}

    pub struct Option;
    pub struct Clone;
    pub struct Duration;
    pub struct Ok;
    pub struct Some;
    pub const None: u8 = 0;
    pub fn Err() {}
    pub type Result = ();
    pub type KeyBuilder = ();
    pub type Options = ();
    pub fn run() {}
    pub fn default_locker() {}

    #[::lockattr::distributed_lock(key = "shadow:<id>", wait = "1s", lease = "5s")]
    pub async fn shadowed(id: u32) -> ::core::result::Result<u32, ::lockattr::Error> {
        ::core::result::Result::Ok(id)
    }

    pub struct WithLocker {
        pub locker: ::lockattr::Locker,
    }

    impl WithLocker {
        #[::lockattr::distributed_lock(key = "shadow", locker = self.locker)]
        pub async fn method(&self) -> ::core::result::Result<(), ::lockattr::Error> {
            ::core::result::Result::Ok(())
        }
    }
}

fn main() {
    let _ = shadowing::shadowed(1);
}
