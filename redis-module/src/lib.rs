//! sluice's decision as two native Redis commands, `sluice.decide.<id>` and
//! `sluice.batch.<id>`: the same keys, arguments, replies and writes as `FCALL` of the function
//! library's `sluice_decide_<id>` and `sluice_batch_<id>` (same `<id>`), decided in Rust
//! (`sluice::redis::native`) instead of Lua. Keys are shared with proxies whose gateway runs
//! the library: both read and write the same text states.
//!
//! This file is only the shell: it reads the keys a call names, asks `native` to decide, writes
//! what it says and answers. Why each choice (the contract: `docs/architecture.md`, "Contracts:
//! the Redis module"):
//! - **Keys** are declared by `getkeys-api`, `numkeys` first as for `FCALL`, so a Cluster
//!   checks that they are all of the node's slots (MOVED, CROSSSLOT) before anything runs, and
//!   ACLs and `COMMAND GETKEYS` see them.
//! - **Writes replicate as their effects**, `SET key state PXAT when`, never as the command: a
//!   replica or an AOF replay needs no module and cannot decide again at another time.
//! - **Time** is the wall clock read once per command in µs, as the scripts read `TIME`.
//! - **Nothing a client sends can stop Redis**: no text is turned into a C string without
//!   being cleaned first, and every failure is an error reply (a panic here would abort the
//!   server).

use std::ffi::{c_int, c_long, c_longlong, CString};
use std::ptr::NonNull;
use std::time::{SystemTime, UNIX_EPOCH};

use redis_module::{raw, redis_module, Context, RedisString, Status};
use sluice::redis::native::{self, Keys, Write};
use sluice::redis::script;
use sluice::redis::state::MAX_STATE_BYTES;
use sluice::redis::wire::Reply;

redis_module! {
    name: "sluice",
    version: 1,
    allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
    data_types: [],
    init: register,
}

/// Writes, keys read through `getkeys-api` (first, last and step unused), refused when Redis is
/// over `maxmemory` as `SET` would be.
const FLAGS: &str = "write deny-oom getkeys-api";

/// A lifetime is capped here (about 146 million years): Redis adds its clock to it, and an
/// expiry past `i64::MAX` ms would wrap into the past.
const MAX_TTL_MS: u64 = 1 << 62;

type Handler = extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

fn register(ctx: &Context, _args: &[RedisString]) -> Status {
    // A write is its state, its absolute expiry and its replication together: a server without
    // one of these (before Redis 6.2) would keep states that never expire and that its replicas
    // never see. Such a server refuses the module at load, not at its first write.
    // SAFETY: copies of function pointers the module API filled in before calling `register`.
    let (expire, replicate) = unsafe { (raw::RedisModule_SetAbsExpire, raw::RedisModule_Replicate) };
    if expire.is_none() || replicate.is_none() {
        ctx.log_warning(
            "sluice: this Redis lacks RedisModule_SetAbsExpire or RedisModule_Replicate (Redis 7.0 or later is needed)",
        );
        return Status::Err;
    }
    let commands: [(String, Handler); 2] =
        [(script::module_command_name(), decide_command), (script::module_batch_command_name(), batch_command)];
    for (name, handler) in commands {
        let (Ok(c_name), Ok(flags)) = (CString::new(name.as_str()), CString::new(FLAGS)) else {
            return Status::Err;
        };
        let Some(create) = (unsafe { raw::RedisModule_CreateCommand }) else {
            return Status::Err;
        };
        // SAFETY: `ctx` is the load context Redis passed in; the strings outlive the call
        // (Redis copies the name and parses the flags).
        let created = unsafe { create(ctx.ctx, c_name.as_ptr(), Some(handler), flags.as_ptr(), 0, 0, 0) };
        if created != raw::Status::Ok as c_int {
            ctx.log_warning(&format!("sluice: cannot create command {name}"));
            return Status::Err;
        }
    }
    Status::Ok
}

#[derive(Clone, Copy)]
enum Kind {
    One,
    Batch,
}

extern "C" fn decide_command(ctx: *mut raw::RedisModuleCtx, argv: *mut *mut raw::RedisModuleString, argc: c_int) -> c_int {
    serve(ctx, argv, argc, Kind::One)
}

extern "C" fn batch_command(ctx: *mut raw::RedisModuleCtx, argv: *mut *mut raw::RedisModuleString, argc: c_int) -> c_int {
    serve(ctx, argv, argc, Kind::Batch)
}

fn serve(ctx: *mut raw::RedisModuleCtx, argv: *mut *mut raw::RedisModuleString, argc: c_int, kind: Kind) -> c_int {
    let context = Context::new(ctx);
    let argv: &[*mut raw::RedisModuleString] = match usize::try_from(argc) {
        // SAFETY: Redis passes `argc` strings at `argv`, alive for the whole call.
        Ok(n) if !argv.is_null() => unsafe { std::slice::from_raw_parts(argv, n) },
        _ => &[],
    };
    // Read in place: no string is retained or copied.
    let words: Vec<&[u8]> = argv.iter().map(|&arg| RedisString::string_as_slice(arg)).collect();
    let layout = split(&words);
    if context.is_keys_position_request() {
        // Redis asks where the keys are (a Cluster's slot check, ACLs, COMMAND GETKEYS).
        let Ok((keys, _)) = layout else {
            return raw::Status::Err as c_int;
        };
        for pos in 2..2 + keys.len() {
            context.key_at_pos(c_int::try_from(pos).unwrap_or(c_int::MAX));
        }
        return raw::Status::Ok as c_int;
    }
    let (keys, rest) = match layout {
        Ok(split) => split,
        Err(text) => return reply_error(&context, &text),
    };
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    // The keys' own strings, after the name and numkeys.
    let names = argv.get(2..2 + keys.len()).unwrap_or_default();
    let mut store = Store { ctx: &context, names };
    let reply = match kind {
        Kind::One => {
            let (reply, writes) = native::one(keys, rest, &mut store, now_us);
            write_all(&store, &writes, now_us);
            reply
        }
        Kind::Batch => native::batch(keys, rest, &mut store, now_us).map(|(replies, writes)| {
            write_all(&store, &writes, now_us);
            Reply::Array(replies)
        }),
    };
    match reply {
        Ok(reply) => {
            send(&context, &reply);
            raw::Status::Ok as c_int
        }
        Err(text) => reply_error(&context, &text),
    }
}

/// Some of a command's words.
type Words<'w, 'a> = &'w [&'a [u8]];

/// `name numkeys key… arg…`: the keys and the arguments. `numkeys` is digits only, as `FCALL`
/// reads it (0 is allowed there too: a call of no limits admits).
fn split<'w, 'a>(words: Words<'w, 'a>) -> Result<(Words<'w, 'a>, Words<'w, 'a>), String> {
    let numkeys = words
        .get(1)
        .filter(|w| !w.is_empty() && w.iter().all(u8::is_ascii_digit))
        .and_then(|w| std::str::from_utf8(w).ok())
        .and_then(|w| w.parse::<usize>().ok());
    let Some(first_arg) = numkeys.and_then(|n| n.checked_add(2)) else {
        return Err("ERR sluice: numkeys must be a non-negative integer".into());
    };
    match (words.get(2..first_arg), words.get(first_arg..)) {
        (Some(keys), Some(rest)) => Ok((keys, rest)),
        _ => Err("ERR sluice: numkeys is greater than the number of arguments".into()),
    }
}

/// The keys a command reads, through Redis' key API (no command is run for them).
struct Store<'c> {
    ctx: &'c Context,
    /// The command's key names, as Redis passed them.
    names: &'c [*mut raw::RedisModuleString],
}

impl Store<'_> {
    /// Key `at`'s name, or a new string holding `key` (never needed: `native` names the place
    /// of every key it reads or writes).
    fn name(&self, key: &[u8], at: usize) -> RedisString {
        match self.names.get(at) {
            Some(&name) if RedisString::string_as_slice(name) == key => RedisString::new(NonNull::new(self.ctx.ctx), name),
            _ => RedisString::create_from_slice(self.ctx.ctx, key),
        }
    }
}

impl Keys for Store<'_> {
    fn get(&mut self, key: &[u8], at: usize) -> Result<Option<Vec<u8>>, String> {
        let name = self.name(key, at);
        let key = self.ctx.open_key(&name);
        match key.key_type() {
            raw::KeyType::Empty => Ok(None),
            // A state past the readers' bound is refused by its length alone: copy no more of
            // it than shows that (a foreign value may be of any size).
            raw::KeyType::String => match key.read() {
                Ok(text) => Ok(text.map(|t| t[..t.len().min(MAX_STATE_BYTES + 1)].to_vec())),
                Err(e) => Err(format!("ERR sluice: cannot read a key: {e}")),
            },
            _ => Err("WRONGTYPE Operation against a key holding the wrong kind of value".into()),
        }
    }
}

/// Stores each write and replicates it as `SET key state PXAT when`, with the very expiry the
/// key got here, so a replica or an AOF replay holds exactly what the primary holds. The state
/// is set as a new string, as `SET` does: a short one is then stored in one allocation (writing
/// into the key's own string would keep it apart from its object, and over-allocated when it
/// grows). A key was read as a string (or missing) by the same command, so storing it cannot
/// fail but for memory, which Redis itself reports.
fn write_all(store: &Store<'_>, writes: &[Write], now_us: u64) {
    let ctx = store.ctx;
    let now_ms = now_us / 1000;
    for write in writes {
        // Below 2^63 (the lifetime's cap plus today's clock): it fits a long long.
        let when_ms = c_longlong::try_from(now_ms + write.ttl_ms.clamp(1, MAX_TTL_MS)).unwrap_or(c_longlong::MAX);
        let name = store.name(&write.key, write.at);
        let key = Writable::open(ctx, &name);
        let state = RedisString::create_from_slice(ctx.ctx, write.state.as_bytes());
        let stored = raw::string_set(key.0, state.inner) == raw::Status::Ok && key.expire_at(when_ms);
        drop(key);
        if !stored {
            ctx.log_warning("sluice: cannot store a state");
            continue;
        }
        replicate_set(ctx, &name, write.state.as_bytes(), when_ms);
    }
}

/// A key open for writing, closed when dropped. (The crate's own handle hides the raw key, which
/// `RedisModule_SetAbsExpire` needs.)
struct Writable(*mut raw::RedisModuleKey);

impl Writable {
    fn open(ctx: &Context, name: &RedisString) -> Self {
        Writable(raw::open_key(ctx.ctx, name.inner, raw::KeyMode::WRITE))
    }

    /// Sets the expiry to `when_ms` (epoch ms), an absolute time like the `PXAT` replicated.
    fn expire_at(&self, when_ms: c_longlong) -> bool {
        let Some(set_abs_expire) = (unsafe { raw::RedisModule_SetAbsExpire }) else {
            return false;
        };
        // SAFETY: the key is open for writing and holds a value (just set).
        unsafe { set_abs_expire(self.0, when_ms) == raw::Status::Ok as c_int }
    }
}

impl Drop for Writable {
    fn drop(&mut self) {
        raw::close_key(self.0);
    }
}

/// `SET key state PXAT when` to replicas and the AOF, its arguments handed over as they are
/// (the module API's own formats), not as new strings.
fn replicate_set(ctx: &Context, key: &RedisString, state: &[u8], when_ms: c_longlong) {
    let Some(replicate) = (unsafe { raw::RedisModule_Replicate }) else {
        return;
    };
    // SAFETY: the format names a RedisModuleString ("s"), a buffer and its length ("b"), a C
    // string ("c") and a long long ("l"), in that order, which are the arguments that follow.
    unsafe {
        replicate(ctx.ctx, c"SET".as_ptr(), c"sbcl".as_ptr(), key.inner, state.as_ptr(), state.len(), c"PXAT".as_ptr(), when_ms);
    }
}

fn send(ctx: &Context, reply: &Reply) {
    match reply {
        Reply::Int(i) => {
            raw::reply_with_long_long(ctx.ctx, *i);
        }
        Reply::Array(items) => {
            raw::reply_with_array(ctx.ctx, c_long::try_from(items.len()).unwrap_or(c_long::MAX));
            for item in items {
                send(ctx, item);
            }
        }
        Reply::Error(text) => {
            reply_error(ctx, text);
        }
        Reply::Nil => {
            raw::reply_with_null(ctx.ctx);
        }
        Reply::Str(text) => {
            raw::reply_with_string_buffer(ctx.ctx, text.as_ptr().cast(), text.len());
        }
    }
}

/// An error reply whose text holds only printable ASCII: it may quote what a client sent, and
/// the module API's own cleaning keeps one byte of each character (a character such as U+0100
/// would become a NUL, and the C string it builds would fail).
fn reply_error(ctx: &Context, text: &str) -> c_int {
    let clean: String = text.chars().map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).collect();
    ctx.reply_error_string(&clean);
    raw::Status::Ok as c_int
}
