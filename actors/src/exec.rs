//! What a lock command runs on: the engine's fred client, or a direct
//! connection of our own (`wire`). One trait, so that one `node::run`
//! builds every command and reads every reply, whichever connection takes
//! it.

use std::future::Future;

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::{KeysInterface, LuaInterface};
use fred::types::scripts::Script;
use fred::types::{Key, Value};

/// A connection that runs lock commands.
pub(crate) trait Exec: Sync {
    /// `EVALSHA` of `script`, as is: a `NOSCRIPT` error is the caller's.
    fn run_script(
        &self,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> impl Future<Output = Result<Value, Error>> + Send;

    /// `SCRIPT LOAD` of `script`.
    fn load_script(&self, script: &Script) -> impl Future<Output = Result<(), Error>> + Send;

    /// `GET key`.
    fn get_key(&self, key: &str) -> impl Future<Output = Result<Value, Error>> + Send;

    /// The acquisition of a free key as plain commands written together,
    /// where the connection writes several commands at once: `SET key token
    /// NX <expiry> ttl`, the `GET` that arms tracking, and `EXISTS` of the
    /// key's fair queue (`{key}:q`); their three replies, which
    /// `scripts::read_free_acquire` reads. `None` where the connection
    /// writes and flushes each command on its own (fred's client): there
    /// one script call is the cheaper write.
    fn acquire_free(
        &self,
        key: &[u8],
        token: &[u8],
        expiry: &[u8],
        ttl: i64,
    ) -> impl Future<Output = Option<Result<[Result<Value, Error>; 3], Error>>> + Send;
}

impl Exec for Client {
    fn run_script(
        &self,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> impl Future<Output = Result<Value, Error>> + Send {
        LuaInterface::evalsha(self, script.sha1().clone(), keys, args)
    }

    fn load_script(&self, script: &Script) -> impl Future<Output = Result<(), Error>> + Send {
        script.load(self)
    }

    fn get_key(&self, key: &str) -> impl Future<Output = Result<Value, Error>> + Send {
        KeysInterface::get(self, key)
    }

    fn acquire_free(
        &self,
        _: &[u8],
        _: &[u8],
        _: &[u8],
        _: i64,
    ) -> impl Future<Output = Option<Result<[Result<Value, Error>; 3], Error>>> + Send {
        std::future::ready(None)
    }
}
