//! The Lua scripts sent to Valkey, the per-attempt token, and the parsing of
//! script replies into plain enums.
//!
//! Scripts touch one key, except the acquire script when it moves a fencing
//! counter, and the calls of many keys that a node sends for the extensions
//! of a tick or for the acquisitions, releases and checks it finds queued
//! together (on a cluster, the keys of one hash slot per call). Each one
//! that can leave the key ours ends with a `GET`: reads are what default-mode
//! `CLIENT TRACKING` remembers, and the server forgets a key's tracking entry on
//! every write, our own included. The `GET` (re-)arms the invalidation that wakes
//! waiters and tells holders about a loss. This is valkeylock's (Go) trick.

use fred::types::scripts::Script;
use fred::types::Value;

use crate::election::Record;
use crate::few::InlineBytes;

/// `SET NX`, idempotent for our own token, on one key (an acquisition) or many
/// (a node's batch of extensions, or the acquisitions it found queued
/// together), each with a mode: `NX` acquires if free,
/// `FORCE` overwrites whatever is there, `XX` only extends a key that is
/// already ours (never re-creates it).
///
/// `KEYS`: the lock keys, then, when `ARGV[3]` is `1`, the name's fencing
/// counter (single instance only). `ARGV`: milliseconds, `PX`|`PXAT`, the
/// fencing flag, then a token and a mode per lock key.
///
/// Reply: an array with one entry per lock key: `1` ours now; a string, the
/// value of its other owner; nil, absent; a two-element
/// array `{0, message}`, the server refused a command on that key; `{1, 0}`,
/// the key is free but waiters queue for it (its fair queue `{key}:q`
/// exists; see `FAIR_LUA`): the acquisition must go through the queue's
/// gate. Waiters of lockers without fair queueing join that queue once they
/// have waited a validity, so a plain `SET NX` must not pass them. (A key
/// with braces of its own is not checked: its queue could be on another
/// cluster slot; the engine queues no waiter of such lockers on a cluster.) With the
/// fencing counter, one more entry: the counter, incremented in the same
/// atomic step by a fresh acquisition, unchanged for a retry of our own
/// (token already there), except for a run that claimed before (`before`
/// `1`, below) and finds its token there: its earlier runs took nothing, so
/// the key was handed to it, which moved no counter, and it counts as
/// fresh.
///
/// Hand-over (`LockerOptions::handover`): a mode of the form
/// `NX|<claimant>|<arrival>|<seq>|<before>` is `NX` that, when the key is
/// held by another owner, leaves a claim on it: in the hash `{key}:c`, under
/// the claimant (its locker's channel), the token, the instant the key would
/// have expired had this step taken it (server milliseconds; `PXAT` is the
/// caller's own), and `seq`, the caller's id of this command, after
/// `arrival` (µs since the Unix epoch, when its waiter started waiting: the
/// same on every key, so every key orders its claimants alike), as
/// `"<arrival> <token> <expiry> <seq>"`; the hash lives as long as its
/// longest claim. A release of a locker with hand-over
/// (`RELEASE_HANDOVER_LUA`) gives the key to the oldest live claim. A step
/// that takes the key, or finds it ours, with `before` `1` (the caller has
/// claimed before) takes its claim out. A claim is best effort: a failure to
/// write it is not an error of the key.
///
/// "Ours" is what the trailing `GET` reads, not what the write replied: a
/// `PXAT`/`PEXPIREAT` time already past (this machine's wall clock behind
/// the server's by more than the validity) makes the server delete the key,
/// or never create it, and still reply OK; the key is then reported absent.
/// Only a key that really became ours moves the fencing counter.
///
/// Each key's commands go through `redis.pcall`, and a failure ends only that
/// key's step: with `redis.call`, one key that a third party turned into a
/// hash (`WRONGTYPE`), or a `SET` refused under `maxmemory` with `noeviction`
/// (`OOM`), aborted the whole script, and with it every other lock's extension
/// in the node's batch; with one instance, every lock of the process lapsed.
/// The error marker is a nested array because nothing else in the reply is
/// one (a key's value is always a string), so it cannot be mistaken for an
/// owner's value, and an array survives RESP2 and RESP3 unchanged (an error
/// reply nested in an array does not reliably reach the caller).
///
/// The script starts with the case nearly every uncontended lock is: one
/// key, no fencing counter, a plain `NX`. That path gives the same reply as
/// the general steps after it and leaves the same key (a test compares the
/// two on every outcome), without their set-up and bookkeeping (three
/// closures and a pattern match on the mode, made anew by every call, a
/// loop and a table of replies), and it looks for braces in the key with
/// two plain searches instead of a pattern. It also reads the key only
/// once: the queue check, then `SET NX`, then the `GET` that arms tracking
/// and tells what the key holds (ours, another owner's, or absent when a
/// `PXAT` already past made the server drop it). The general steps read
/// the key first and write it after; for a free key that read armed
/// tracking only for the write to drop it. So a free key costs three
/// commands instead of four (the server spends about 17 % less time on it,
/// `cargo bench --bench script_cost`; BENCHMARKS.md, "The acquire script's
/// own cost"), and a key another owner holds three instead of one (the
/// queue check and a `SET NX` that does nothing: about 0.7 µs more at the
/// server; an attempt that fails is the rarer one). The queue check is a
/// read, so it arms tracking on the queue's key for that attempt too, as
/// it did before for a free key; the engine drops invalidations of keys
/// that are not lock keys (`node::route_invalidation`). Anything
/// else (a fair queue there, the key ours already, a refused write, a
/// failed read, fencing, a claim, `FORCE`, `XX`, many keys) goes on to the
/// general steps, which read the key again; a refused `SET NX` (`OOM`) does
/// too, so that a key another owner holds is reported as theirs rather
/// than as a failure, as the general steps report it.
///
/// On a direct connection of our own (`wire`) that case does not come here
/// first: its three commands go as plain commands written together, the
/// write before the queue check, and only what their replies leave open
/// comes to the script ([`FreeAcquired`]).
const ACQUIRE_LUA: &str = r#"
if #KEYS == 1 and ARGV[3] == '0' and ARGV[5] == 'NX' then
  local key, token = KEYS[1], ARGV[4]
  local braces = string.find(key, '{', 1, true) or string.find(key, '}', 1, true)
  if braces or redis.pcall('EXISTS', '{' .. key .. '}:q') == 0 then
    local r = redis.pcall('SET', key, token, 'NX', ARGV[2], ARGV[1])
    if type(r) ~= 'table' or r.err == nil then
      local now = redis.pcall('GET', key)
      if r then
        if now == token then return {1} end
        if type(now) == 'table' and now.err ~= nil then return {{0, tostring(now.err)}} end
        return {now}
      elseif type(now) == 'string' and now ~= token then
        return {now}
      end
    end
  end
end
local n = #KEYS
if ARGV[3] == '1' then n = n - 1 end
local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end
local function claim(key, token, who, arrival, seq)
  local c = '{' .. key .. '}:c'
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local lapse = tonumber(ARGV[1])
  if ARGV[2] ~= 'PXAT' then lapse = now + lapse end
  if lapse <= now then return end
  local v = arrival .. ' ' .. token .. ' ' .. string.format('%.0f', lapse) .. ' ' .. seq
  if failed(redis.pcall('HSET', c, who, v)) then return end
  local p = redis.pcall('PTTL', c)
  if type(p) == 'number' and p < lapse - now then redis.pcall('PEXPIRE', c, lapse - now) end
end
local function step(key, token, mode)
  local m, who, arrival, seq, before = string.match(mode, '^(%u+)|(.+)|(%d+)|(%d+)|([01])$')
  if m then mode = m end
  local cur = redis.pcall('GET', key)
  if failed(cur) then return cur end
  local r
  if cur == token then
    if ARGV[2] == 'PXAT' then
      r = redis.pcall('PEXPIREAT', key, ARGV[1])
    else
      r = redis.pcall('PEXPIRE', key, ARGV[1])
    end
  elseif mode == 'XX' or (cur and mode ~= 'FORCE') then
    if who and cur then claim(key, token, who, arrival, seq) end
    return cur
  else
    if mode == 'NX' and not cur and not string.find(key, '[{}]') then
      if redis.pcall('EXISTS', '{' .. key .. '}:q') == 1 then return {1, 0} end
    end
    r = redis.pcall('SET', key, token, ARGV[2], ARGV[1])
  end
  if failed(r) then return r end
  if before == '1' then redis.pcall('HDEL', '{' .. key .. '}:c', who) end
  local now = redis.pcall('GET', key)
  -- Fresh: taken now, or found ours by a run that claimed before. That
  -- run's earlier runs took nothing (or it would not claim), so the key
  -- was handed to it, and a hand-over moves no counter.
  if now == token then return 1, cur ~= token or before == '1' end
  return now
end
local out = {}
local fresh = false
for i = 1, n do
  local reply, won = step(KEYS[i], ARGV[2 + 2 * i], ARGV[3 + 2 * i])
  if failed(reply) then
    out[i] = {0, tostring(reply.err)}
  else
    out[i] = reply
    if won then fresh = true end
  end
end
if ARGV[3] == '1' then
  if fresh then
    out[n + 1] = redis.call('INCR', KEYS[n + 1])
  else
    out[n + 1] = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
  end
end
return out
"#;

/// The fair queue of one lock key, and the acquisition it gates (fair
/// queueing, `LockerOptions::fair`). Each lock key has its own queue on its
/// own node: a sorted set `{key}:q` of waiters ordered by when they started
/// waiting, a sorted set `{key}:qd` of when each one's place lapses
/// unless refreshed, and a string `{key}:qt`, the server's time when the
/// queue last changed. The braces put them on the lock key's cluster slot.
/// Every waiter's score is its own arrival time, sent by its locker and the
/// same on every key, so the queues of all keys agree on the order.
///
/// A place's life counts only the time in which the server serves its
/// queue. A live waiter refreshes its place every `extend_interval` (at most
/// a third of a place's life), so while one waits the queue changes at least
/// that often; a longer gap since `{key}:qt` means that the server ran
/// nothing (stopped, or every link to it frozen), with the refreshes held up
/// meanwhile about to run, in whatever order it reads its connections. Every
/// call first moves all deadlines forward by the part of the gap beyond half
/// a place's life: without that, the first script to run after a stall of
/// over half a place's life dropped the places whose refreshes waited right
/// behind it, and an acquisition of a later arrival passed them all (the
/// real-server fair nemesis showed this after an 828 ms freeze, with places
/// lasting 1 s). A place nobody refreshes is still dropped after a place's
/// life of service: within that life of real time while anyone else waits
/// (their refreshes keep the queue changing), and when the only calls are
/// acquisitions that make no place, half a life after the first of them or
/// at the second (each catch-up counts as a change).
///
/// `KEYS`: the lock key, the queue, the deadlines, the time of the last
/// change, then, when `ARGV[3]` is `1`, the name's fencing counter.
/// `ARGV`: 1 milliseconds, 2 `PX`|`PXAT`, 3 the fencing flag, 4 what to do
/// (`A` acquire, `R` acquire for a waiter whose place was made before, `E`
/// place or refresh the waiters, `D` remove them), 5 the token, 6 the
/// mode, 7 the waiter the acquisition is for (empty: a try, which only
/// takes a key nobody queues for), 8 how long a place lasts unrefreshed
/// (ms; every call sends it), 9 how long `R` lets the others rejoin (ms),
/// 10 how many places follow, then the places to make or refresh: a member
/// and its arrival time (µs since the Unix epoch) each, then members: for
/// `A` the locker's other waiters (its own at the head, but not refreshed),
/// for `D` the waiters to take out.
///
/// `R` first looks for the candidate's place. If the key is free, the
/// place is gone and so is every other (the queue is empty), the queue was
/// lost (the node restarted empty, or was out of reach for longer than a
/// place lasts) and every waiter's place with it. Taking the key then would
/// serve whoever comes back first; instead it places its waiters again,
/// marks the rebuild (`{key}:qs`, lapsing after `ms`, the time given to the
/// others to rejoin, each with its first arrival time) and replies
/// `{1, ms}`, so the order is rebuilt before anyone is served. A rejoin
/// that comes during the rebuild places its waiters and waits for the rest
/// of the same one (before, each started a rebuild of its own). If other
/// places are still there and no rebuild is under way, only this locker's
/// places lapsed (it was out of reach, or too slow, for longer than a place
/// lasts, while the others kept theirs): it places its waiters again, with
/// their first arrival times, and goes on as `A`. Before, that too waited a
/// rebuild, with the key free and other waiters in the queue: the
/// simulator found a slow link that, lapsing one locker's places, kept a
/// free lock from a reachable waiter for 788 ms (base `0x6e015`,
/// docs/SAFETY.md).
///
/// `A` takes a free key when its queue is empty or its head is one of the
/// waiters it was sent for (the locker then picks which of its waiters gets the grant,
/// in its own order: the two orders can differ after a place lapsed and came
/// back later, and insisting on one waiter would then deadlock the locker
/// with itself). A key it takes gets no place for the candidate (an
/// uncontended acquisition writes nothing but the key), and keeps the one
/// it had: if the attempt fails, the waiter keeps its turn; if it wins, the
/// locker takes the place out of every queue. It replies like
/// `ACQUIRE_LUA` for one key, plus `{1, ms}` when the key is free but
/// another locker's waiter is ahead: `ms` is how long that waiter's place
/// lasts unless refreshed. `E` and `D` reply `1`. A failure of any command
/// replies `{0, message}`.
///
/// An arrival time is taken as sent unless it lies more than ten minutes
/// before the server's clock: a locker whose clock runs behind gains at
/// most that much on the others. Not less: a place that lapsed (its node
/// restarted empty) comes back with the same arrival time on every node, so
/// that all queues keep one order; a place pulled forward on some nodes only
/// could split the heads, each key going to another waiter and none winning
/// the majority.
const FAIR_LUA: &str = r#"
local key, q, qd, qt = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, token, mode, cand = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local life, settle = tonumber(ARGV[8]), tonumber(ARGV[9])
local gap = math.floor(life / 2)
local rest = 11 + 2 * tonumber(ARGV[10])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function int(x) return string.format('%.0f', x) end
local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end
local function call(...)
  local r = redis.pcall(...)
  if failed(r) then error(r) end
  return r
end
local touched = false
local function keep()
  if not touched then return end
  local last = call('ZRANGE', qd, -1, -1, 'WITHSCORES')
  if last[2] then
    local at = int(tonumber(last[2]) + gap)
    call('PEXPIREAT', q, at)
    call('PEXPIREAT', qd, at)
    call('SET', qt, int(now_ms), 'PXAT', at)
  else
    call('DEL', q, qd, qt)
  end
end
local deadlines = {}
local function catch_up()
  local all = call('ZRANGE', qd, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do deadlines[#deadlines + 1] = {all[i], tonumber(all[i + 1])} end
  if #deadlines == 0 then return end
  local seen = tonumber(call('GET', qt) or '')
  if not seen or now_ms - seen <= gap then return end
  local late = now_ms - seen - gap
  for _, d in ipairs(deadlines) do
    d[2] = d[2] + late
    call('ZADD', qd, int(d[2]), d[1])
  end
  touched = true
end
local function prune()
  local gone = 0
  for _, d in ipairs(deadlines) do
    if d[2] <= now_ms then
      call('ZREM', q, d[1])
      gone = gone + 1
    end
  end
  if gone > 0 then
    call('ZREMRANGEBYSCORE', qd, '-inf', int(now_ms))
    touched = true
  end
end
local function place(skip)
  for i = 11, rest - 2, 2 do
    if ARGV[i] ~= skip then
      local at = tonumber(ARGV[i + 1]) or now_us
      if at < now_us - 600000000 then at = now_us - 600000000 end
      call('ZADD', q, 'NX', int(at), ARGV[i])
      call('ZADD', qd, int(now_ms + life), ARGV[i])
      touched = true
    end
  end
end
local function head()
  while true do
    local h = call('ZRANGE', q, 0, 0)[1]
    if not h then return nil end
    local d = call('ZSCORE', qd, h)
    if d then return h, tonumber(d) - now_ms end
    call('ZREM', q, h)
    touched = true
  end
end
local function leave(m)
  if m ~= '' and call('ZREM', q, m) > 0 then
    call('ZREM', qd, m)
    touched = true
  end
end
local function acquire()
  prune()
  local cur = call('GET', key)
  if cur == token then
    place(cand)
    if ARGV[2] == 'PXAT' then
      call('PEXPIREAT', key, ARGV[1])
    else
      call('PEXPIRE', key, ARGV[1])
    end
  elseif mode == 'XX' or (cur and mode ~= 'FORCE') then
    place('')
    keep()
    return cur
  else
    if op == 'R' and not call('ZSCORE', q, cand) then
      local rebuilding = call('PTTL', q .. 's')
      local lost = #call('ZRANGE', q, 0, 0) == 0
      place('')
      if rebuilding > 0 then
        keep()
        return {1, rebuilding}
      end
      if lost then
        call('SET', q .. 's', '1', 'PX', settle)
        keep()
        return {1, settle}
      end
    end
    local mine = {}
    if cand ~= '' then mine[cand] = true end
    for i = 11, rest - 2, 2 do mine[ARGV[i]] = true end
    for i = rest, #ARGV do mine[ARGV[i]] = true end
    local h, left = head()
    if h and not mine[h] and mode ~= 'FORCE' then
      place('')
      keep()
      return {1, math.max(left, 0)}
    end
    call('SET', key, token, ARGV[2], ARGV[1])
    place(cand)
  end
  keep()
  local now = call('GET', key)
  if now == token then return 1, cur ~= token end
  return now
end
local ok, reply, won = pcall(function()
  catch_up()
  if op == 'A' or op == 'R' then return acquire() end
  if op == 'E' then
    prune()
    place('')
  else
    for i = rest, #ARGV do leave(ARGV[i]) end
  end
  keep()
  return 1
end)
if not ok then
  if type(reply) == 'table' and reply.err ~= nil then
    return {0, tostring(reply.err)}
  end
  return {0, tostring(reply)}
end
if op ~= 'A' and op ~= 'R' then return reply end
local out = {reply}
if ARGV[3] == '1' then
  if won then
    out[2] = redis.call('INCR', KEYS[5])
  else
    out[2] = tonumber(redis.call('GET', KEYS[5]) or '0')
  end
end
return out
"#;

/// Read-only check of a key after an invalidation: never writes, so it cannot
/// cause an invalidation of its own (no self-invalidation loop, valkeylock
/// §4.2-1), and its `GET` re-arms tracking.
///
/// `ARGV`: token. Reply: the key's `PTTL` in ms if it is ours (−1: no expiry);
/// a string, the value of its other owner; nil, the key is absent.
const VERIFY_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  return redis.call('PTTL', KEYS[1])
end
return cur
"#;

/// Raises a fencing counter to `ARGV[1]` unless it is already there or
/// higher (a max-register). Reply: `{1, value}` if this call raised it,
/// `{0, value}` if it was already there or higher. Only a raise counts as an
/// acknowledgement (see `core::fence`): two attempts writing the same value
/// cannot both collect a majority.
const FENCE_WRITE_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if cur < want then
  redis.call('SET', KEYS[1], ARGV[1])
  return {1, want}
end
return {0, cur}
"#;

/// Compare-and-delete. `ARGV`: token. Reply: 1 deleted, 0 not ours.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Compare-and-delete of many keys (of many locks) in one call: what a
/// node's command pump sends for the releases it finds queued together (a
/// burst of releases, or a locker closing). Each key is `RELEASE_LUA`'s
/// step on its own; the call saves the round of script overhead per key
/// that made a burst of 10,000 releases outlast their time limit (see
/// `node::run_pump`). Standalone nodes, or keys of one cluster hash slot.
///
/// `KEYS`: the lock keys. `ARGV`: a token per key. Reply: an array with one
/// entry per key: `1` deleted, `0` not ours (absent, or another owner's), or
/// `{0, message}` when the server refused a command on that key (`WRONGTYPE`):
/// as in `ACQUIRE_LUA`, one bad key fails that key only, not the others.
const RELEASE_MANY_LUA: &str = r#"
local out = {}
for i = 1, #KEYS do
  local cur = redis.pcall('GET', KEYS[i])
  if type(cur) == 'table' and cur.err ~= nil then
    out[i] = {0, tostring(cur.err)}
  elseif cur == ARGV[i] then
    local r = redis.pcall('DEL', KEYS[i])
    if type(r) == 'table' and r.err ~= nil then
      out[i] = {0, tostring(r.err)}
    else
      out[i] = r
    end
  else
    out[i] = 0
  end
end
return out
"#;

/// Compare-and-delete of one key or many, for lockers with hand-over
/// (`LockerOptions::handover`): a key of ours with a live claim on it (see
/// `ACQUIRE_LUA`) is not deleted but handed to the oldest one, by arrival:
/// set to the claim's token, expiring when the claimant's own acquisition
/// would have made it expire, and the claimant is told on its channel
/// (`PUBLISH <claimant> "<seq> <token> <key>"`). The claimant counts the key
/// from the moment it sent the command `seq`, as if that command had taken
/// it: the expiry is the one it would have set. A claimant nobody hears for
/// (`PUBLISH` reached no subscriber: its locker closed, its process died,
/// its connection dropped) is passed over for the next claim: handing it
/// the key held the key until that claim lapsed, up to a validity. The
/// key is set before the message goes out, so no claimant is told of a
/// key that is not its own; a `SET` passed over is overwritten in the same
/// atomic step, and nobody saw it. Claims that lapsed, the ones passed
/// over and the one handed are taken out; a key with a fair queue
/// (`FAIR_LUA`) is deleted, as the queue decides who is next.
///
/// Given after the tokens the name of each key's fencing counter (a locker
/// with `fencing` on one instance, where the acquire script moves the
/// counter as it takes the key), a key handed over moves its counter in
/// the same step, once, before the first message, and the message says
/// the new value: `PUBLISH <claimant> "<seq>:<fence> <token> <key>"`. The
/// claimant is granted with it, without the two round trips of the fencing
/// step; the value is above every token granted before and below every
/// one granted after, as the acquire script's would be. A claimant passed
/// over never saw its value, so the next one gets the same.
///
/// `KEYS`: the lock keys. `ARGV`: a token per key, then nothing or a
/// counter's name per key (empty: none). Reply: an array with one entry
/// per key: `1` deleted or handed, `0` not ours, `{0, message}` when the
/// server refused a command on that key.
const RELEASE_HANDOVER_LUA: &str = r#"
local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end
local now
local function hand(key, mine, counter)
  if not string.find(key, '[{}]') and redis.pcall('EXISTS', '{' .. key .. '}:q') == 1 then
    return false
  end
  local c = '{' .. key .. '}:c'
  local all = redis.pcall('HGETALL', c)
  if failed(all) or #all == 0 then return false end
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local live, gone = {}, {}
  for i = 1, #all, 2 do
    local a, tok, lapse, seq = string.match(all[i + 1], '^(%d+) (%S+) (%d+) (%d+)$')
    if not a or tok == mine or tonumber(lapse) <= now then
      gone[#gone + 1] = all[i]
    else
      live[#live + 1] = {tonumber(a), all[i], tok, lapse, seq}
    end
  end
  table.sort(live, function(x, y) return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2]) end)
  local handed, fence = false, nil
  for _, cand in ipairs(live) do
    gone[#gone + 1] = cand[2]
    if failed(redis.pcall('SET', key, cand[3], 'PXAT', cand[4])) then break end
    if counter and not fence then
      local f = redis.pcall('INCR', counter)
      if failed(f) then counter = nil else fence = f end
    end
    local seq = cand[5]
    if fence then seq = seq .. ':' .. string.format('%.0f', fence) end
    local heard = redis.pcall('PUBLISH', cand[2], seq .. ' ' .. cand[3] .. ' ' .. key)
    if failed(heard) or heard > 0 then
      handed = true
      break
    end
  end
  if #gone > 0 then redis.pcall('HDEL', c, unpack(gone)) end
  return handed
end
local out = {}
for i = 1, #KEYS do
  local cur = redis.pcall('GET', KEYS[i])
  if failed(cur) then
    out[i] = {0, tostring(cur.err)}
  elseif cur ~= ARGV[i] then
    out[i] = 0
  elseif hand(KEYS[i], cur, ARGV[#KEYS + i] ~= '' and ARGV[#KEYS + i] or nil) then
    out[i] = 1
  else
    local r = redis.pcall('DEL', KEYS[i])
    if failed(r) then
      out[i] = {0, tostring(r.err)}
    else
      out[i] = r
    end
  end
end
return out
"#;

/// Hand-over: takes a waiter's claim on a key back (its waiters gave up),
/// if it is still the claim of that token: a claim the locker's next
/// waiter has written since, under the same channel with a new token, is
/// left alone. `KEYS`: the lock key (the claims are in `{key}:c`, as in
/// `ACQUIRE_LUA`). `ARGV`: the claimant's channel, the token. Reply: `1`
/// taken out, `0` not there.
const UNCLAIM_LUA: &str = r#"
local c = '{' .. KEYS[1] .. '}:c'
local v = redis.call('HGET', c, ARGV[1])
if v and string.match(v, '^%d+ (%S+) ') == ARGV[2] then
  return redis.call('HDEL', c, ARGV[1])
end
return 0
"#;

/// `VERIFY_LUA` for many keys (of many locks) in one call: what a node's
/// command pump sends for the checks it finds queued together, as after a
/// reconnect, when every lock re-checks its keys on that node at once (see
/// `node::run_pump`). Never writes. Standalone nodes, or keys of one cluster
/// hash slot.
///
/// `KEYS`: the lock keys. `ARGV`: a token per key. Reply: an array with one
/// entry per key: the key's `PTTL` in ms if it is ours (−1: no expiry); a
/// string, the value of its other owner; nil, absent; `{0, message}` when
/// the server refused a command on that key.
const VERIFY_MANY_LUA: &str = r#"
local out = {}
for i = 1, #KEYS do
  local cur = redis.pcall('GET', KEYS[i])
  if type(cur) == 'table' and cur.err ~= nil then
    out[i] = {0, tostring(cur.err)}
  elseif cur == ARGV[i] then
    out[i] = redis.pcall('PTTL', KEYS[i])
  else
    out[i] = cur
  end
end
return out
"#;

/// Read-only look at one key for `inspect`: its value and remaining TTL in
/// one atomic step (a `GET` then a `PTTL` as two commands could see two
/// different owners), and who waits beside it: the hand-over claims
/// (`{key}:c`, see `ACQUIRE_LUA`) and the fair queue's places (`{key}:q`,
/// with their deadlines in `{key}:qd`, see `FAIR_LUA`), with the server's
/// clock to tell their ages by. Never writes; its `GET` arms tracking on the
/// key, which is what wakes a `LockWatch`.
///
/// Reply: `{key, seconds, microseconds, claims, places, deadlines}`. `key`
/// is `{}` when the key is absent, `{value, pttl}` (`pttl` −1: no expiry),
/// or `{0, message}` when the server refused the `GET` (`WRONGTYPE`: a third
/// party stored something else under the key). `seconds` and
/// `microseconds` are the server's `TIME`. The other three are the flat
/// replies of `HGETALL` and of `ZRANGE … WITHSCORES`, or `{0, message}` when
/// the server refused that read (an ACL user without `+hgetall` or
/// `+zrange`); empty for a key with braces, which has neither, and unless
/// `ARGV[1]` is `1` (watches, elections and semaphores look without).
const INSPECT_LUA: &str = r#"
local key = KEYS[1]
local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end
local function read(...)
  local r = redis.pcall(...)
  if failed(r) then return {0, tostring(r.err)} end
  return r
end
local k = {}
local cur = redis.pcall('GET', key)
if failed(cur) then
  k = {0, tostring(cur.err)}
elseif cur then
  k = {cur, redis.call('PTTL', key)}
end
local t = redis.call('TIME')
local c, q, qd = {}, {}, {}
if ARGV[1] == '1' and not string.find(key, '[{}]') then
  c = read('HGETALL', '{' .. key .. '}:c')
  q = read('ZRANGE', '{' .. key .. '}:q', 0, -1, 'WITHSCORES')
  qd = read('ZRANGE', '{' .. key .. '}:qd', 0, -1, 'WITHSCORES')
end
return {k, t[1], t[2], c, q, qd}
"#;

/// The gated acquisition of one key of a read-write lock (`rwlock`): the
/// acquire script's step for a free key, taken only when its gates are
/// closed.
///
/// `KEYS`: the lock key, then the fencing counter when `ARGV[3]` is `1`,
/// then the gates: for a reader (`ARGV[5]` `r`), the writer's key and its
/// intent; for the writer (`w`), its intent, then every reader slot's key.
/// `ARGV`: 1 milliseconds, 2 `PX`|`PXAT`, 3 the fencing flag, 4 the token,
/// 5 the side, 6 how long the writer's intent lasts (ms).
///
/// A key already ours is extended, as by the acquire script; a key held by
/// another is reported as its value. A free key is refused while a gate
/// key exists: the reply is `rw-gate` (not a token, so it never reads as a
/// configuration mismatch), and the gate that refused is read, so its
/// change wakes the refused. A writer refused by a reader leaves its intent
/// (its token, lapsing after `ARGV[6]` ms); a writer that wins takes the
/// intent away, whoever left it (another waiting writer leaves it again at
/// its next refusal, and is refused anyway while this one holds).
/// The reply has the acquire script's shape for one key.
const RW_ACQUIRE_LUA: &str = r#"
local key, token, side = KEYS[1], ARGV[4], ARGV[5]
local first = 2
if ARGV[3] == '1' then first = 3 end
local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end
local function fenced(out, won)
  if ARGV[3] == '1' then
    if won then
      out[2] = redis.call('INCR', KEYS[2])
    else
      out[2] = tonumber(redis.call('GET', KEYS[2]) or '0')
    end
  end
  return out
end
local cur = redis.pcall('GET', key)
if failed(cur) then return fenced({{0, tostring(cur.err)}}, false) end
local r
if cur == token then
  if ARGV[2] == 'PXAT' then
    r = redis.pcall('PEXPIREAT', key, ARGV[1])
  else
    r = redis.pcall('PEXPIRE', key, ARGV[1])
  end
elseif cur then
  return fenced({cur}, false)
else
  local from = first
  if side == 'w' then from = first + 1 end
  for i = from, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      if side == 'w' then
        redis.call('SET', KEYS[first], token, 'PX', ARGV[6])
      end
      return fenced({'rw-gate'}, false)
    end
  end
  r = redis.pcall('SET', key, token, ARGV[2], ARGV[1])
end
if failed(r) then return fenced({{0, tostring(r.err)}}, false) end
local now = redis.pcall('GET', key)
if now ~= token then return fenced({now}, false) end
if side == 'w' then
  redis.call('DEL', KEYS[first])
end
return fenced({1}, cur ~= token)
"#;

/// An election's log (`election`): appends one term's record, keeping the
/// newest terms, then reads the terms after a given one.
///
/// `KEYS`: the log (a sorted set scored by term). `ARGV`: 1 the term to add
/// (empty: only read), 2 its member (token prefix, newline, value), 3 how
/// many terms to keep, 4 read the terms above this one.
///
/// Reply: the records read, as a flat array (member, score, …); or
/// `{0, message}` when the server refused a command (the key is another
/// type, memory is full). The read (`ZRANGE`) arms tracking on the log, so
/// the next term's write wakes the locker's observers.
const LOG_LUA: &str = r#"
if ARGV[1] ~= '' then
  local added = redis.pcall('ZADD', KEYS[1], ARGV[1], ARGV[2])
  if type(added) == 'table' and added.err ~= nil then
    return {0, tostring(added.err)}
  end
  local n = redis.call('ZCARD', KEYS[1])
  local keep = tonumber(ARGV[3])
  if n > keep then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - keep - 1)
  end
end
local read = redis.pcall('ZRANGE', KEYS[1], '(' .. ARGV[4], '+inf', 'BYSCORE', 'WITHSCORES')
if type(read) == 'table' and read.err ~= nil then
  return {0, tostring(read.err)}
end
return read
"#;

/// Reads a `LOG_LUA` reply: the records, in term order (our own records
/// only: a member that is not one is skipped), or why the server refused.
pub(crate) fn parse_log(value: &Value) -> Result<Vec<Record>, String> {
    let Value::Array(items) = value else {
        return Err(format!("unexpected reply to the log script: {value:?}"));
    };
    if let [Value::Integer(0), message] = items.as_slice() {
        return Err(message.as_string().unwrap_or_else(|| "refused".to_owned()));
    }
    let bytes = |v: &Value| match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Bytes(b) => Some(b.to_vec()),
        Value::Integer(n) => Some(n.to_string().into_bytes()),
        _ => None,
    };
    Ok(items
        .chunks_exact(2)
        .filter_map(|pair| Record::parse(&bytes(&pair[0])?, &bytes(&pair[1])?))
        .collect())
}

/// The scripts, hashed once per process.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) verify: Script,
    pub(crate) release: Script,
    /// For releases queued together (see `node::run_pump`).
    pub(crate) release_many: Script,
    /// For checks queued together (see `node::run_pump`).
    pub(crate) verify_many: Script,
    /// Releases of lockers with hand-over, one key or many.
    pub(crate) release_handover: Script,
    /// Claims taken back by lockers with hand-over. Loaded on first use
    /// (a waiter giving up is rare; one call at a time, so its `NOSCRIPT`
    /// holds up nothing queued behind it).
    pub(crate) unclaim: Script,
    pub(crate) fence_write: Script,
    /// Loaded on first use (`inspect` is rare; a connection does not need it).
    pub(crate) inspect: Script,
    /// Loaded on first use, by lockers with fair queueing.
    pub(crate) fair: Script,
    /// Loaded on first use, by elections.
    pub(crate) log: Script,
    /// Loaded on first use, by read-write locks.
    pub(crate) rw_acquire: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            acquire: Script::from_lua(ACQUIRE_LUA),
            verify: Script::from_lua(VERIFY_LUA),
            release: Script::from_lua(RELEASE_LUA),
            release_many: Script::from_lua(RELEASE_MANY_LUA),
            verify_many: Script::from_lua(VERIFY_MANY_LUA),
            release_handover: Script::from_lua(RELEASE_HANDOVER_LUA),
            unclaim: Script::from_lua(UNCLAIM_LUA),
            fence_write: Script::from_lua(FENCE_WRITE_LUA),
            inspect: Script::from_lua(INSPECT_LUA),
            fair: Script::from_lua(FAIR_LUA),
            log: Script::from_lua(LOG_LUA),
            rw_acquire: Script::from_lua(RW_ACQUIRE_LUA),
        }
    }
}

/// How `ACQUIRE_LUA` treats a key held by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetMode {
    /// Take the key only if it is free (or already ours).
    Nx,
    /// Overwrite it.
    Force,
    /// Only extend it if it is ours.
    Xx,
}

impl SetMode {
    pub(crate) fn as_arg(self) -> &'static str {
        match self {
            SetMode::Nx => "NX",
            SetMode::Force => "FORCE",
            SetMode::Xx => "XX",
        }
    }
}

/// What one key looked like when a script ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyState {
    /// Ours; for `VERIFY_LUA`, with the remaining TTL (`None`: no expiry);
    /// for `ACQUIRE_LUA` with a fencing counter, its value.
    Ours {
        pttl_ms: Option<u64>,
        fence: Option<u64>,
    },
    /// Held by another owner. `forced` when that owner's token says it came
    /// from `force_lock`; `owner` the configuration fingerprint in its value
    /// when the value is in this library's format (`None` for anything else,
    /// e.g. the Go valkeylock's 24 raw bytes, or a token of an older version
    /// without a fingerprint).
    Other {
        forced: bool,
        owner: Option<Fingerprint>,
    },
    /// Absent.
    Absent,
    /// Free, but another waiter is ahead in the key's fair queue; its place
    /// lapses in `head_ms` unless refreshed (`FAIR_LUA` only).
    Queued { head_ms: u64 },
}

/// Reads one entry of an `ACQUIRE_LUA` reply, or a `VERIFY_LUA` reply.
/// `verify` selects how an integer is read (a PTTL, or the constant 1).
pub(crate) fn parse_key_state(value: &Value, verify: bool) -> Option<KeyState> {
    match value {
        Value::Integer(n) if verify => Some(KeyState::Ours {
            pttl_ms: u64::try_from(*n).ok(),
            fence: None,
        }),
        Value::Integer(1) => Some(KeyState::Ours {
            pttl_ms: None,
            fence: None,
        }),
        Value::Null => Some(KeyState::Absent),
        Value::String(s) => Some(Token::owner_state(s.as_bytes())),
        Value::Bytes(b) => Some(Token::owner_state(b)),
        _ => None,
    }
}

/// One entry of an `ACQUIRE_LUA` reply: the key's state, or the error the
/// server gave for that key alone (its text, for logs).
pub(crate) type KeyReply = Result<KeyState, String>;

/// Reads one entry of an `ACQUIRE_LUA` reply: a key state, or the per-key
/// error marker `{0, message}`.
fn parse_acquire_entry(value: &Value) -> Option<KeyReply> {
    match value {
        Value::Array(marker) => match marker.as_slice() {
            [Value::Integer(1), Value::Integer(ms)] => Some(Ok(KeyState::Queued {
                head_ms: u64::try_from(*ms).unwrap_or(0),
            })),
            marker => refusal(marker).map(Err),
        },
        other => parse_key_state(other, false).map(Ok),
    }
}

/// Reads an `ACQUIRE_LUA` reply for `keys` lock keys (plus the fencing
/// counter when `fence`): one entry per key, the counter folded into the
/// first key's state. `None` if the reply has the wrong shape.
pub(crate) fn parse_acquire(value: &Value, keys: usize, fence: bool) -> Option<Vec<KeyReply>> {
    let Value::Array(items) = value else {
        return None;
    };
    if items.len() != keys + usize::from(fence) {
        return None;
    }
    let mut states = items[..keys]
        .iter()
        .map(parse_acquire_entry)
        .collect::<Option<Vec<_>>>()?;
    if fence {
        let counter = parse_fence(&items[keys])?;
        if let Some(first) = states.first_mut() {
            with_fence(first, counter);
        }
    }
    Some(states)
}

/// The script reads the fencing counter after the keys; it belongs to the
/// first key's state, if that key is ours.
fn with_fence(state: &mut KeyReply, counter: u64) {
    if let Ok(KeyState::Ours { fence, .. }) = state {
        *fence = Some(counter);
    }
}

/// [`parse_acquire`] of a reply for one key, the lock actor's own commands:
/// the same rule without a vector.
pub(crate) fn parse_acquire_one(value: &Value, fence: bool) -> Option<KeyReply> {
    let Value::Array(items) = value else {
        return None;
    };
    let (entry, counter) = match (items.as_slice(), fence) {
        ([entry], false) => (entry, None),
        ([entry, counter], true) => (entry, Some(parse_fence(counter)?)),
        _ => return None,
    };
    let mut state = parse_acquire_entry(entry)?;
    if let Some(counter) = counter {
        with_fence(&mut state, counter);
    }
    Some(state)
}

/// What the plain commands of a free key's acquisition replied, read as
/// `ACQUIRE_LUA`'s reply for that key (one key, no fencing counter, a plain
/// `NX`: the case its first lines answer).
///
/// Why plain commands: on a connection that writes several commands at
/// once (a direct connection, `wire`), `SET NX`, the `GET` that arms
/// tracking and `EXISTS` of the fair queue go out in one write, and the
/// server runs them for about a quarter of what the script costs it
/// (BENCHMARKS.md, "A free key's acquisition as plain commands"). They are
/// not atomic, so they run in the order that keeps the script's rule that
/// a plain `SET NX` does not pass queued waiters: the write first, then
/// the queue check. A queue that exists when the check runs either existed
/// when the key was written, or came after; either way the key is given
/// back and the acquisition reported queued for, as the script would
/// report it had the queue come first. Nobody else could hold the key
/// meanwhile, and its delete wakes the queue's head through tracking.
/// Whatever the script tells apart and these replies do not (the key ours
/// already, a write or a read refused, the key gone between the write and
/// the read) is left to the script.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FreeAcquired {
    /// The script's reply: ours, another owner's value, absent, or queued
    /// for.
    Reply(Value),
    /// Taken while waiters queue for the key: give it back
    /// (compare-and-delete), then report it queued for ([`queued_reply`]).
    GiveBack,
    /// Run the script.
    Script,
}

/// `ACQUIRE_LUA`'s reply for a key that is free but queued for: `{{1, 0}}`.
pub(crate) fn queued_reply() -> Value {
    Value::Array(vec![Value::Array(vec![
        Value::Integer(1),
        Value::Integer(0),
    ])])
}

/// Reads the replies of `SET key token NX …`, `GET key` and `EXISTS
/// {key}:q`, sent together in that order ([`FreeAcquired`]).
pub(crate) fn read_free_acquire(
    replies: &[Result<Value, fred::error::Error>; 3],
    token: &[u8],
) -> FreeAcquired {
    fn value(v: &Value) -> Option<&[u8]> {
        match v {
            Value::String(s) => Some(s.as_bytes()),
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    let one = |v: &Value| FreeAcquired::Reply(Value::Array(vec![v.clone()]));
    let [set, now, queue] = replies;
    let queued = match queue {
        Ok(Value::Integer(0)) => Some(false),
        Ok(Value::Integer(1)) => Some(true),
        _ => None,
    };
    match (set, now) {
        // Written: ours, unless a `PXAT` already past dropped it (absent) or
        // another owner took it once it was gone.
        (Ok(Value::String(ok)), Ok(now)) if ok.as_bytes() == b"OK" => {
            let ours = value(now).is_some_and(|v| v == token);
            // A string, or nil; nothing else answers a `GET`.
            let readable = matches!(now, Value::Null) || value(now).is_some();
            match (queued, ours) {
                (Some(false), true) => FreeAcquired::Reply(Value::Array(vec![Value::Integer(1)])),
                (Some(true), true) => FreeAcquired::GiveBack,
                (Some(false), false) if readable => one(now),
                (Some(true), false) if readable => FreeAcquired::Reply(queued_reply()),
                _ => FreeAcquired::Script,
            }
        }
        // Not written: another owner's, whether or not waiters queue.
        (Ok(Value::Null), Ok(now)) => match value(now) {
            Some(v) if v != token => one(now),
            _ => FreeAcquired::Script,
        },
        _ => FreeAcquired::Script,
    }
}

/// Reads a fencing counter (a `GET` or `FENCE_WRITE_LUA` reply): nil is 0.
pub(crate) fn parse_fence(value: &Value) -> Option<u64> {
    match value {
        Value::Null => Some(0),
        Value::Integer(n) => u64::try_from(*n).ok(),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// Reads a `FENCE_WRITE_LUA` reply: whether this call raised the counter,
/// and its value.
pub(crate) fn parse_fence_write(value: &Value) -> Option<(bool, u64)> {
    let Value::Array(items) = value else {
        return None;
    };
    match items.as_slice() {
        [Value::Integer(raised), v] => Some((*raised == 1, parse_fence(v)?)),
        _ => None,
    }
}

/// What `INSPECT_LUA` saw in one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Absent,
    /// Its value, and its remaining TTL (`None`: no expiry).
    Present {
        value: Vec<u8>,
        pttl_ms: Option<u64>,
    },
    /// The server refused to read it, or the reply made no sense.
    Unreadable(String),
}

/// A waiter recorded beside a key, as `INSPECT_LUA` read it: a hand-over
/// claim or a fair queue place that has not lapsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// A hand-over claim (true) or a place in the fair queue.
    pub(crate) claim: bool,
    /// The claim's token, or the place's id.
    pub(crate) who: Vec<u8>,
    /// Since its arrival, by the server's clock (µs).
    pub(crate) waited_us: u64,
    /// Until it lapses unless its locker refreshes it (ms).
    pub(crate) lapses_in_ms: u64,
}

/// What `INSPECT_LUA` saw at one key: the key, and who waits beside it or
/// why that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Look {
    pub(crate) seen: Seen,
    pub(crate) waiting: Result<Vec<Recorded>, String>,
}

impl Look {
    /// Nothing could be read, for `why`.
    pub(crate) fn unreadable(why: String) -> Look {
        Look {
            seen: Seen::Unreadable(why.clone()),
            waiting: Err(why),
        }
    }
}

const ODD_INSPECT: &str = "unexpected reply to inspect";

/// Reads an `INSPECT_LUA` reply. Anything unexpected is unreadable, never a
/// panic; a malformed claim or place (anyone may write those keys) is left
/// out.
pub(crate) fn parse_inspect(value: &Value) -> Look {
    let Value::Array(parts) = value else {
        return Look::unreadable(ODD_INSPECT.to_owned());
    };
    let [key, secs, micros, claims, places, deadlines] = parts.as_slice() else {
        return Look::unreadable(ODD_INSPECT.to_owned());
    };
    let seen = parse_seen(key);
    let waiting = match (reply_number(secs), reply_number(micros)) {
        (Some(s), Some(us)) => {
            let now_us = s.saturating_mul(1_000_000).saturating_add(us);
            flat_reply(claims).and_then(|claims| {
                let mut out = recorded_claims(&claims, now_us);
                out.extend(recorded_places(
                    &flat_reply(places)?,
                    &flat_reply(deadlines)?,
                    now_us,
                ));
                Ok(out)
            })
        }
        _ => Err(ODD_INSPECT.to_owned()),
    };
    Look { seen, waiting }
}

/// The key's part of an `INSPECT_LUA` reply.
fn parse_seen(value: &Value) -> Seen {
    let Value::Array(items) = value else {
        return Seen::Unreadable(ODD_INSPECT.to_owned());
    };
    match items.as_slice() {
        [] => Seen::Absent,
        [Value::Integer(0), message] => Seen::Unreadable(
            message
                .as_str()
                .map(|m| m.into_owned())
                .unwrap_or_else(|| "unreadable error".to_owned()),
        ),
        [v, Value::Integer(pttl)] => match v.as_bytes() {
            Some(value) => Seen::Present {
                value: value.to_vec(),
                pttl_ms: u64::try_from(*pttl).ok(),
            },
            None => Seen::Unreadable(ODD_INSPECT.to_owned()),
        },
        _ => Seen::Unreadable(ODD_INSPECT.to_owned()),
    }
}

/// A whole number in a reply: an integer, or its decimal text.
fn reply_number(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(n) => u64::try_from(*n).ok(),
        v => text_number(v.as_bytes()?),
    }
}

/// A whole number written as text; a sorted set's score may come as
/// `1.7e+15`.
fn text_number(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.parse::<u64>().ok().or_else(|| {
        let f = text.parse::<f64>().ok()?;
        // Saturating; NaN and the negatives are not a time.
        (f >= 0.0).then_some(f as u64)
    })
}

/// A flat reply of strings (`HGETALL`, `ZRANGE … WITHSCORES`), or the
/// server's refusal (`{0, message}`).
fn flat_reply(value: &Value) -> Result<Vec<&[u8]>, String> {
    let Value::Array(items) = value else {
        return Err(ODD_INSPECT.to_owned());
    };
    if let [Value::Integer(0), message] = items.as_slice() {
        return Err(message
            .as_str()
            .map(|m| m.into_owned())
            .unwrap_or_else(|| "unreadable error".to_owned()));
    }
    items
        .iter()
        .map(|v| v.as_bytes().ok_or_else(|| ODD_INSPECT.to_owned()))
        .collect()
}

/// The live claims of `HGETALL {key}:c`: a field per locker's channel, a
/// value `<arrival µs> <token> <lapse ms> <command>`.
fn recorded_claims(flat: &[&[u8]], now_us: u64) -> Vec<Recorded> {
    let now_ms = now_us / 1000;
    flat.chunks_exact(2)
        .filter_map(|pair| {
            let text = std::str::from_utf8(pair[1]).ok()?;
            let mut parts = text.split(' ');
            let arrival = parts.next()?.parse::<u64>().ok()?;
            let token = parts.next().filter(|t| !t.is_empty())?;
            let lapse = parts.next()?.parse::<u64>().ok()?;
            parts.next()?.parse::<u64>().ok()?;
            if parts.next().is_some() || lapse <= now_ms {
                return None;
            }
            Some(Recorded {
                claim: true,
                who: token.as_bytes().to_vec(),
                waited_us: now_us.saturating_sub(arrival),
                lapses_in_ms: lapse - now_ms,
            })
        })
        .collect()
}

/// The live places of a fair queue: `{key}:q` (member, arrival µs) and
/// `{key}:qd` (member, deadline ms). A place without a deadline, or past
/// it, is one the queue's next write takes out.
fn recorded_places(queue: &[&[u8]], deadlines: &[&[u8]], now_us: u64) -> Vec<Recorded> {
    let now_ms = now_us / 1000;
    let deadlines: std::collections::HashMap<&[u8], u64> = deadlines
        .chunks_exact(2)
        .filter_map(|d| Some((d[0], text_number(d[1])?)))
        .collect();
    queue
        .chunks_exact(2)
        .filter_map(|pair| {
            let arrival = text_number(pair[1])?;
            let lapse = deadlines.get(pair[0]).copied().filter(|&d| d > now_ms)?;
            Some(Recorded {
                claim: false,
                who: pair[0].to_vec(),
                waited_us: now_us.saturating_sub(arrival),
                lapses_in_ms: lapse - now_ms,
            })
        })
        .collect()
}

/// Reads the reply of `FAIR_LUA` placing or removing waiters: `Ok` when it
/// ran, the server's message when it refused.
pub(crate) fn parse_queued(value: &Value) -> Option<Result<(), String>> {
    match value {
        Value::Integer(1) => Some(Ok(())),
        Value::Array(_) => match parse_acquire_entry(value)? {
            Err(message) => Some(Err(message)),
            Ok(_) => None,
        },
        _ => None,
    }
}

/// Reads a `RELEASE_LUA` reply: true when the key was ours and is now deleted.
pub(crate) fn parse_released(value: &Value) -> Option<bool> {
    match value {
        Value::Integer(n) => Some(*n == 1),
        _ => None,
    }
}

/// Reads a `RELEASE_MANY_LUA` reply for `keys` keys: per key, deleted or
/// not, or the server's refusal. `None` if the reply has the wrong shape.
pub(crate) fn parse_released_many(value: &Value, keys: usize) -> Option<Vec<Result<bool, String>>> {
    parse_per_key(value, keys, parse_released)
}

/// Reads a `VERIFY_MANY_LUA` reply for `keys` keys: per key, its state, or
/// the server's refusal. `None` if the reply has the wrong shape.
pub(crate) fn parse_verified_many(value: &Value, keys: usize) -> Option<Vec<KeyReply>> {
    parse_per_key(value, keys, |v| parse_key_state(v, true))
}

/// Reads a reply of one entry per key, each read by `entry` unless it is the
/// per-key error marker `{0, message}`.
fn parse_per_key<T>(
    value: &Value,
    keys: usize,
    entry: impl Fn(&Value) -> Option<T>,
) -> Option<Vec<Result<T, String>>> {
    let Value::Array(items) = value else {
        return None;
    };
    if items.len() != keys {
        return None;
    }
    items
        .iter()
        .map(|item| match item {
            Value::Array(marker) => refusal(marker).map(Err),
            other => entry(other).map(Ok),
        })
        .collect()
}

/// The server's text in a per-key error marker `{0, message}`.
fn refusal(marker: &[Value]) -> Option<String> {
    match marker {
        [Value::Integer(0), message] => Some(
            message
                .as_str()
                .map(|m| m.into_owned())
                .unwrap_or_else(|| "unreadable error".to_owned()),
        ),
        _ => None,
    }
}

/// The configuration a locker writes into its keys' values: `key_majority`
/// and the number of nodes, the two settings that decide where a lock's keys
/// are, and for a semaphore's permit the number of permits, which decides
/// how many permit slots there are. Lockers that differ in any of them do not
/// exclude each other; an attempt that finds a key held under another
/// fingerprint fails with `Error::ConfigMismatch`. Written
/// `m{key_majority}n{nodes}`, e.g. `m2n3`, with `p{permits}` after it for a
/// permit, e.g. `m2n3p5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fingerprint {
    majority: u16,
    nodes: u16,
    /// `Some(n)` for a permit of a semaphore of `n`; `None` for a lock.
    permits: Option<u16>,
}

impl Fingerprint {
    pub(crate) fn new(majority: usize, nodes: usize) -> Fingerprint {
        Fingerprint {
            majority: u16::try_from(majority).unwrap_or(u16::MAX),
            nodes: u16::try_from(nodes).unwrap_or(u16::MAX),
            permits: None,
        }
    }

    /// The same configuration, claiming a permit of a semaphore of
    /// `permits` (`None`: a lock).
    pub(crate) fn with_permits(self, permits: Option<u16>) -> Fingerprint {
        Fingerprint { permits, ..self }
    }

    /// Reads `m<digits>n<digits>`, optionally followed by `p<digits>` (1 to
    /// 5 digits each); `None` otherwise.
    fn parse(text: &[u8]) -> Option<Fingerprint> {
        let number = |digits: &[u8]| -> Option<u16> {
            if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(digits).ok()?.parse().ok()
        };
        let rest = text.strip_prefix(b"m")?;
        let n_at = rest.iter().position(|&b| b == b'n')?;
        let (majority, rest) = (&rest[..n_at], &rest[n_at + 1..]);
        let (nodes, permits) = match rest.iter().position(|&b| b == b'p') {
            Some(p_at) => (&rest[..p_at], Some(number(&rest[p_at + 1..])?)),
            None => (rest, None),
        };
        Some(Fingerprint {
            majority: number(majority)?,
            nodes: number(nodes)?,
            permits,
        })
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m{}n{}", self.majority, self.nodes)?;
        match self.permits {
            Some(p) => write!(f, "p{p}"),
            None => Ok(()),
        }
    }
}

/// Random hex digits in a token: 24 bytes.
const TOKEN_HEX: usize = 48;

/// A fresh random value per acquisition attempt: 24 bytes from the operating
/// system's CSPRNG, hex-encoded (printable in `valkeylock status`, and as
/// unguessable as valkeylock's raw 24 bytes), then `:` and the locker's
/// [`Fingerprint`]: `[F]<48 hex>:m<M>n<N>`. Tokens of `force_lock` start with
/// `F`, so a holder can tell "forced" from "overwritten".
///
/// Built once per attempt in one allocation, then shared: the core, the
/// commands of every key and the holder's view clone it by reference count,
/// and it goes on the wire as the same bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Token(fred::bytes::Bytes);

/// The longest token: `F`, the hex digits, `:` and a fingerprint of three
/// `u16`s, each a letter and at most five digits (`m…n…p…`).
const TOKEN_MAX: usize = 1 + TOKEN_HEX + 1 + 3 * 6;

/// A token's bytes, kept inline so that the token costs one allocation: 88
/// bytes with the shared owner's header (a buffer sized for 20-digit
/// numbers made it 136).
type TokenBuf = InlineBytes<TOKEN_MAX>;

impl Token {
    /// A token for a locker with `fingerprint`, from the operating system's
    /// generator (the engine's lock cores take theirs through `core::Entropy`).
    #[cfg(test)]
    pub(crate) fn generate(forced: bool, fingerprint: Fingerprint) -> Token {
        let mut bytes = [0u8; 24];
        getrandom::getrandom(&mut bytes)
            .expect("the operating system's random number generator failed");
        Token::from_bytes(&bytes, forced, fingerprint)
    }

    /// A token from 24 random bytes, for a locker with `fingerprint`.
    pub(crate) fn from_bytes(bytes: &[u8; 24], forced: bool, fingerprint: Fingerprint) -> Token {
        use std::io::Write;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0; TOKEN_MAX];
        let mut len = 0;
        if forced {
            buf[0] = b'F';
            len = 1;
        }
        for b in bytes {
            buf[len] = HEX[(b >> 4) as usize];
            buf[len + 1] = HEX[(b & 15) as usize];
            len += 2;
        }
        buf[len] = b':';
        len += 1;
        let mut rest = &mut buf[len..];
        let room = rest.len();
        // Cannot overflow: TOKEN_MAX leaves room for the longest fingerprint
        // (a test writes it).
        let _ = write!(rest, "{fingerprint}");
        len += room - rest.len();
        let text = &buf[..len];
        // Always inline (`buf` is the inline buffer's size); a copy else.
        Token(TokenBuf::new(text).map_or_else(
            || fred::bytes::Bytes::copy_from_slice(text),
            TokenBuf::into_bytes,
        ))
    }

    /// A token as it came back from the server in a hand-over's message
    /// (`RELEASE_HANDOVER_LUA`): `None` unless it has a token's shape, so
    /// that what a third party publishes is never taken for one of ours
    /// (ours are compared whole, and the longest is [`TOKEN_MAX`]).
    pub(crate) fn from_wire(bytes: &[u8]) -> Option<Token> {
        let ok = (TOKEN_HEX + 1..=TOKEN_MAX).contains(&bytes.len())
            && bytes.iter().all(|b| b.is_ascii_graphic());
        if !ok {
            return None;
        }
        Some(Token(TokenBuf::new(bytes)?.into_bytes()))
    }

    /// The token as a command argument: the same bytes, shared.
    pub(crate) fn value(&self) -> Value {
        Value::Bytes(self.0.clone())
    }

    /// A token for tests: `key_majority` 2 on one node.
    #[cfg(test)]
    pub(crate) fn new(forced: bool) -> Token {
        Token::generate(forced, Fingerprint::new(2, 1))
    }

    pub(crate) fn as_str(&self) -> &str {
        // Always ASCII: hex digits, `F`, `:` and a fingerprint.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// What a key's value (not ours) says about its owner: whether it came
    /// from `force_lock`, and its fingerprint, when it is in this library's
    /// format. Anything else (the Go valkeylock's raw bytes, a third party's
    /// value) is a plain other owner, never forced, without a fingerprint.
    pub(crate) fn owner_state(value: &[u8]) -> KeyState {
        let (forced, rest) = match value.strip_prefix(b"F") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let plain = KeyState::Other {
            forced: false,
            owner: None,
        };
        if rest.len() < TOKEN_HEX || !rest[..TOKEN_HEX].iter().all(u8::is_ascii_hexdigit) {
            return plain;
        }
        match &rest[TOKEN_HEX..] {
            // A token of a version without fingerprints.
            [] => KeyState::Other {
                forced,
                owner: None,
            },
            [b':', fingerprint @ ..] => match Fingerprint::parse(fingerprint) {
                Some(owner) => KeyState::Other {
                    forced,
                    owner: Some(owner),
                },
                None => plain,
            },
            _ => plain,
        }
    }

    #[cfg(test)]
    fn is_forced(value: &[u8]) -> bool {
        matches!(
            Token::owner_state(value),
            KeyState::Other { forced: true, .. }
        )
    }

    /// The first 8 characters, for logs: enough to correlate, useless to forge.
    pub(crate) fn short(&self) -> &str {
        let s = self.as_str().trim_start_matches('F');
        &s[..8.min(s.len())]
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}…)", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_server::Server;

    /// Unix time in milliseconds, `offset_ms` from now.
    fn unix_ms(offset_ms: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64;
        (now + offset_ms).to_string()
    }

    /// `SET … PXAT t` and `PEXPIREAT` with `t` already past delete the key
    /// (or never create it) and still reply OK / 1: the script must not
    /// call such a key ours. This happens with `fallback_set_px = false`
    /// when this machine's wall clock is behind the server's by more than
    /// the validity.
    #[tokio::test]
    async fn acquire_script_with_an_expiry_already_past() {
        use fred::interfaces::{KeysInterface, LuaInterface};
        let server = Server::start();
        let client = server.client().await;
        let token = Token::new(false);
        let run = |key: &'static str, ttl: String, kind: &'static str, mode: SetMode| {
            let client = client.clone();
            let args = vec![
                ttl,
                kind.to_owned(),
                "0".to_owned(),
                token.as_str().to_owned(),
                mode.as_arg().to_owned(),
            ];
            async move {
                let reply: Value = client
                    .eval(ACQUIRE_LUA, vec![key], args)
                    .await
                    .expect("the acquire script runs");
                parse_acquire(&reply, 1, false)
                    .expect("a well-formed reply")
                    .remove(0)
            }
        };
        let ours = Ok(KeyState::Ours {
            pttl_ms: None,
            fence: None,
        });
        let past = || unix_ms(-1000);

        // A fresh acquisition whose expiry is past: nothing was created.
        assert_eq!(
            run("fresh", past(), "PXAT", SetMode::Nx).await,
            Ok(KeyState::Absent)
        );
        // Forcing over another owner with an expiry past: the key is gone.
        let _: () = client
            .set("forced", "someone-else", None, None, false)
            .await
            .expect("SET");
        assert_eq!(
            run("forced", past(), "PXAT", SetMode::Force).await,
            Ok(KeyState::Absent)
        );
        // Extending our own key with an expiry past: PEXPIREAT deleted it.
        assert_eq!(
            run("ours", "60000".into(), "PX", SetMode::Nx).await,
            ours.clone()
        );
        assert_eq!(
            run("ours", past(), "PXAT", SetMode::Xx).await,
            Ok(KeyState::Absent)
        );
        let exists: i64 = client
            .exists(vec!["fresh", "forced", "ours"])
            .await
            .expect("EXISTS");
        assert_eq!(exists, 0, "a key with an expiry in the past survived");
        // A future expiry still acquires and extends.
        assert_eq!(
            run("future", unix_ms(60_000), "PXAT", SetMode::Nx).await,
            ours.clone()
        );
        assert_eq!(
            run("future", unix_ms(60_000), "PXAT", SetMode::Xx).await,
            ours
        );
    }

    /// The replies of a free key's plain commands, read as the script's
    /// (the real server's replies are compared with the script's in
    /// `node::tests`): whatever they do not tell apart, or any reply of a
    /// shape no server sends, is left to the script, never a panic.
    #[test]
    fn the_plain_commands_replies_are_read_as_the_scripts() {
        use fred::error::{Error, ErrorKind};
        let token = b"T-ours";
        let ok = || Ok(Value::String("OK".into()));
        let s = |v: &str| Ok(Value::String(v.into()));
        let n = |v: i64| Ok(Value::Integer(v));
        let err = || Err(Error::new(ErrorKind::Unknown, "OOM"));
        let reply = |v: Value| FreeAcquired::Reply(Value::Array(vec![v]));
        let ours = reply(Value::Integer(1));
        let other = reply(Value::String("someone".into()));
        let cases: Vec<([Result<Value, Error>; 3], FreeAcquired)> = vec![
            ([ok(), s("T-ours"), n(0)], ours),
            ([ok(), s("T-ours"), n(1)], FreeAcquired::GiveBack),
            ([ok(), Ok(Value::Null), n(0)], reply(Value::Null)),
            (
                [ok(), Ok(Value::Null), n(1)],
                FreeAcquired::Reply(queued_reply()),
            ),
            ([ok(), s("someone"), n(0)], other.clone()),
            (
                [ok(), s("someone"), n(1)],
                FreeAcquired::Reply(queued_reply()),
            ),
            ([Ok(Value::Null), s("someone"), n(0)], other.clone()),
            ([Ok(Value::Null), s("someone"), n(1)], other.clone()),
            ([Ok(Value::Null), s("someone"), err()], other),
            ([Ok(Value::Null), s("T-ours"), n(0)], FreeAcquired::Script),
            (
                [Ok(Value::Null), Ok(Value::Null), n(0)],
                FreeAcquired::Script,
            ),
            ([err(), s("someone"), n(0)], FreeAcquired::Script),
            ([ok(), err(), n(0)], FreeAcquired::Script),
            ([ok(), s("T-ours"), err()], FreeAcquired::Script),
            ([ok(), s("T-ours"), n(7)], FreeAcquired::Script),
            ([ok(), n(5), n(0)], FreeAcquired::Script),
            ([s("QUEUED"), s("T-ours"), n(0)], FreeAcquired::Script),
            ([n(1), s("T-ours"), n(0)], FreeAcquired::Script),
            (
                [Ok(Value::Null), Ok(Value::Array(vec![])), n(0)],
                FreeAcquired::Script,
            ),
        ];
        for (replies, want) in cases {
            assert_eq!(read_free_acquire(&replies, token), want, "{replies:?}");
        }
    }

    /// The acquire script's first lines answer the common case (one key, no
    /// fencing, a plain `NX`) without its general steps. Each outcome of that
    /// case, set up alike on an empty server, gets the same reply and leaves
    /// the same key from the whole script as from its general steps alone:
    /// free (with an expiry ahead or already past), another owner's, ours
    /// already, queued for (free, free with an expiry already past, or
    /// another owner's), keys with braces of their own (a pair, or one of
    /// either kind) whose queue exists, a hash (`WRONGTYPE`), and writes
    /// refused under `maxmemory` (the key free, or another owner's):
    /// `test_server::FREE_KEY_OUTCOMES`, which the plain commands' test in
    /// `node` runs too.
    #[tokio::test]
    async fn the_acquire_scripts_common_case_answers_as_its_general_steps() {
        let server = Server::start();
        let client = server.client().await;
        let (_, rest) = ACQUIRE_LUA
            .split_once("local n = #KEYS")
            .expect("the general steps start with `local n = #KEYS`");
        let general = format!("local n = #KEYS{rest}");
        let raw = |name, args| crate::test_server::raw(&client, name, args);
        let owned = |args: &[&str]| {
            args.iter()
                .map(|a| a.replace("OURS", "T-ours"))
                .collect::<Vec<_>>()
        };
        for (case, key, expiry, setup) in crate::test_server::FREE_KEY_OUTCOMES {
            let mut seen = Vec::new();
            for script in [ACQUIRE_LUA, general.as_str()] {
                let steps = setup.iter().map(|(name, args)| (*name, owned(args)));
                crate::test_server::fresh(&client, steps).await;
                let (ttl, kind) = crate::test_server::expiry(expiry);
                let ttl = ttl.to_string();
                let mut args = owned(&[script, "1", key]);
                args.extend([
                    ttl,
                    kind.to_owned(),
                    "0".to_owned(),
                    "T-ours".to_owned(),
                    "NX".to_owned(),
                ]);
                let reply = raw("EVAL", args).await;
                let left = crate::test_server::key_left(&client, key).await;
                seen.push((reply, left));
            }
            assert_eq!(
                seen[0], seen[1],
                "{case}: the whole script (left) against its general steps"
            );
        }
    }

    /// A place's life counts only the time in which the server serves its
    /// queue (`FAIR_LUA`). After a gap of more than half a place's life since
    /// the queue last changed (a stall: the server ran nothing, and the
    /// refreshes held up meanwhile run right behind this call), the deadlines
    /// move forward by the rest of the gap, so the first call does not drop
    /// the places whose refreshes come next. A shorter gap moves nothing, a
    /// place nobody refreshes still lapses, and the queue's three keys go
    /// when its last place does.
    #[tokio::test]
    async fn a_fair_queue_catches_up_on_a_stall() {
        use fred::interfaces::KeysInterface;
        use std::time::{Duration, Instant};
        const LIFE_MS: u64 = 2_000;
        let server = Server::start();
        let client = server.client().await;
        let fair = Fair {
            client: client.clone(),
            life_ms: LIFE_MS,
        };
        let call = |op, cand, places| fair.call(op, cand, places);
        // Waiter x places itself; then nothing runs on the queue for longer
        // than its place lasts.
        assert_eq!(call("E", "", vec![("x", 1)]).await, Value::Integer(1));
        tokio::time::sleep(Duration::from_millis(LIFE_MS + 300)).await;
        // y (arrived after x) finds x still ahead: its deadline moved by the
        // gap less half a life, which leaves it the other half.
        let sent = Instant::now();
        let ms = fair_head_ms(&call("A", "y", vec![("y", 2)]).await).expect("x is still ahead");
        let answered = Instant::now();
        assert!(
            (LIFE_MS as i64 / 2 - 20..=LIFE_MS as i64 / 2).contains(&ms),
            "x's place lasts {ms} ms more"
        );
        // A gap shorter than half a life moves nothing: x's place runs out
        // in real time. The server's time between the two calls lies
        // between the client's from the first answer to the second call
        // and from the first call to the second answer (a loaded machine
        // delays either end; a fixed tolerance failed there), give or take
        // the server's whole milliseconds.
        tokio::time::sleep(Duration::from_millis(LIFE_MS / 4)).await;
        let sent2 = Instant::now();
        let ms2 = fair_head_ms(&call("A", "y", vec![("y", 2)]).await).expect("x is still ahead");
        let (least, most) = (
            (sent2 - answered).as_millis() as i64,
            sent.elapsed().as_millis() as i64 + 1,
        );
        assert!(
            (ms - most - 2..=ms - least + 2).contains(&ms2),
            "{least} to {most} ms later x's place lasts {ms2} ms more (it had {ms})"
        );
        // Nobody refreshes x: y, refreshing its own place, takes the key
        // once x's place has lapsed, and not before.
        let lapses = Instant::now() + Duration::from_millis(ms2 as u64);
        let took = loop {
            let reply = call("A", "y", vec![("y", 2)]).await;
            if fair_head_ms(&reply).is_none() {
                break Instant::now();
            }
            assert!(
                Instant::now() < lapses + Duration::from_secs(10),
                "x's place never lapsed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            took + Duration::from_millis(20) >= lapses,
            "y took the key {:?} before x's place lapsed",
            lapses - took
        );
        // y leaves the queue once it holds the key: the queue's keys go.
        assert_eq!(call("D", "", vec![("y", 0)]).await, Value::Integer(1));
        let left: i64 = client
            .exists(vec!["{k}:q", "{k}:qd", "{k}:qt"])
            .await
            .expect("EXISTS");
        assert_eq!(left, 0, "the queue's keys outlived its last place");
    }

    /// `FAIR_LUA` calls on the key `k` and its queue, places lasting
    /// `life_ms` (and a rebuild as long).
    struct Fair {
        client: fred::clients::Client,
        life_ms: u64,
    }

    impl Fair {
        /// `op` for candidate `cand` with the places `places` (member,
        /// arrival), or the members to take out for `D`.
        async fn call(&self, op: &str, cand: &str, places: Vec<(&str, u64)>) -> Value {
            use fred::interfaces::LuaInterface;
            let keys = vec!["k", "{k}:q", "{k}:qd", "{k}:qt"];
            let mut args = vec![
                "60000".to_owned(),
                "PX".to_owned(),
                "0".to_owned(),
                op.to_owned(),
                format!("token-of-{cand}"),
                SetMode::Nx.as_arg().to_owned(),
                cand.to_owned(),
                self.life_ms.to_string(),
                self.life_ms.to_string(),
            ];
            if op == "D" {
                args.push("0".to_owned());
                args.extend(places.iter().map(|(m, _)| m.to_string()));
            } else {
                args.push(places.len().to_string());
                for (m, at) in &places {
                    args.push(m.to_string());
                    args.push(at.to_string());
                }
            }
            self.client
                .eval(FAIR_LUA, keys, args)
                .await
                .expect("the fair script runs")
        }
    }

    /// How long the head's place lasts, if an acquisition by `FAIR_LUA`
    /// found the key free with another waiter ahead; `None` if it took the
    /// key.
    fn fair_head_ms(reply: &Value) -> Option<i64> {
        let Value::Array(out) = reply else {
            panic!("an acquisition's reply is an array: {reply:?}")
        };
        match &out[0] {
            Value::Integer(1) => None,
            Value::Array(q) if q.len() == 2 && q[0] == Value::Integer(1) => q[1].as_i64(),
            other => panic!("neither ours nor queued: {other:?}"),
        }
    }

    /// A rejoin (`R`) whose place is gone rebuilds the queue only when the
    /// whole queue is gone, and a rejoin during that rebuild waits for the
    /// rest of it, not a rebuild of its own; the first arrival is then
    /// served. When other places are still there and nothing is being
    /// rebuilt, only the caller's lapsed, and it takes its turn at once.
    #[tokio::test]
    async fn a_lost_queue_is_rebuilt_once_and_a_lapsed_place_rejoins_at_once() {
        use std::time::{Duration, Instant};
        const LIFE_MS: u64 = 600;
        let server = Server::start();
        let fair = Fair {
            client: server.client().await,
            life_ms: LIFE_MS,
        };
        // Arrival times in µs since the Unix epoch (the script takes one
        // more than ten minutes old as ten minutes old).
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_micros() as u64;
        let (v, w, x, y) = (
            now_us - 3_000,
            now_us - 5_000,
            now_us - 1_000,
            now_us + 9_000,
        );
        // Lost: nothing queues. x rejoins and waits the rebuild; w, who
        // arrived before x, comes back 100 ms later and waits for the rest
        // of the same rebuild.
        let start = Instant::now();
        let ms = fair_head_ms(&fair.call("R", "x", vec![("x", x)]).await);
        assert_eq!(ms, Some(LIFE_MS as i64), "a lost queue is rebuilt");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left = fair_head_ms(&fair.call("R", "w", vec![("w", w)]).await)
            .expect("w was served during the rebuild");
        let gone = start.elapsed().as_millis() as i64;
        assert!(
            (1..=LIFE_MS as i64 - gone + 5).contains(&left),
            "w waits {left} ms, {gone} ms into a rebuild of {LIFE_MS}"
        );
        // Once the rebuild's time is over, the first arrival is served. The
        // waiters refresh their places meanwhile, as they do every third
        // of a place's life at most (a queue nobody touches for over half a
        // life is taken for a stalled server, and its deadlines move).
        let over = start + Duration::from_millis(LIFE_MS + 100);
        while Instant::now() < over {
            let refreshed = fair.call("E", "", vec![("w", w), ("x", x)]).await;
            assert_eq!(refreshed, Value::Integer(1));
            tokio::time::sleep(Duration::from_millis(LIFE_MS / 6)).await;
        }
        assert!(
            fair_head_ms(&fair.call("A", "x", vec![("x", x)]).await).is_some(),
            "x passed w, who arrived first"
        );
        assert_eq!(
            fair_head_ms(&fair.call("A", "w", vec![("w", w)]).await),
            None,
            "w, the first arrival, is served once the rebuild is over"
        );
        let _: i64 = fred::interfaces::KeysInterface::del(&fair.client, "k")
            .await
            .expect("DEL");
        // Lapsed: y keeps its place; v's is gone (it was out of reach), so
        // its rejoin puts it back with its first arrival time, ahead of y,
        // and it takes the free key at once.
        assert_eq!(
            fair.call("D", "", vec![("w", 0), ("x", 0)]).await,
            Value::Integer(1)
        );
        assert_eq!(fair.call("E", "", vec![("y", y)]).await, Value::Integer(1));
        assert_eq!(
            fair_head_ms(&fair.call("R", "v", vec![("v", v)]).await),
            None,
            "a locker whose places alone lapsed waited a rebuild"
        );
    }

    /// The batched check reads each key as `VERIFY_LUA` does (ours with its
    /// PTTL, another owner, absent), writes nothing, and fails only the key
    /// the server refuses.
    #[tokio::test]
    async fn verify_many_reads_each_key_like_verify_and_fails_only_a_refused_key() {
        use fred::interfaces::{KeysInterface, LuaInterface};
        let server = Server::start();
        let client = server.client().await;
        let (t1, t5) = (Token::new(false), Token::new(false));
        let _: () = client
            .set(
                "mine",
                t1.as_str(),
                Some(fred::types::Expiration::PX(60_000)),
                None,
                false,
            )
            .await
            .expect("SET");
        let _: () = client
            .set("theirs", Token::new(false).as_str(), None, None, false)
            .await
            .expect("SET");
        let _: () = client
            .set("forever", t5.as_str(), None, None, false)
            .await
            .expect("SET");
        let _: Value = client
            .eval(
                "return redis.call('HSET', KEYS[1], 'f', 'v')",
                vec!["hash"],
                Vec::<String>::new(),
            )
            .await
            .expect("HSET");
        let keys = vec!["mine", "theirs", "gone", "hash", "forever"];
        let tokens = vec![t1.as_str(), "t2", "t3", "t4", t5.as_str()];
        let reply: Value = client
            .eval(VERIFY_MANY_LUA, keys.clone(), tokens)
            .await
            .expect("the script runs");
        let parsed = parse_verified_many(&reply, keys.len()).expect("a well-formed reply");
        assert!(
            matches!(parsed[0], Ok(KeyState::Ours { pttl_ms: Some(ms), fence: None }) if ms > 50_000 && ms <= 60_000),
            "{parsed:?}"
        );
        assert!(
            matches!(parsed[1], Ok(KeyState::Other { .. })),
            "{parsed:?}"
        );
        assert_eq!(parsed[2], Ok(KeyState::Absent));
        assert!(
            matches!(&parsed[3], Err(e) if e.contains("WRONGTYPE")),
            "{parsed:?}"
        );
        assert_eq!(
            parsed[4],
            Ok(KeyState::Ours {
                pttl_ms: None,
                fence: None
            })
        );
        // Read-only: every key is as it was.
        let left: i64 = client.exists(keys).await.expect("EXISTS");
        assert_eq!(left, 4);
        assert_eq!(parse_verified_many(&reply, 6), None);
    }

    /// The batched compare-and-delete deletes exactly the keys that hold
    /// their own token, leaves every other key as it was, and fails only the
    /// key the server refuses (a hash under a lock key), not the batch.
    #[tokio::test]
    async fn release_many_deletes_only_what_is_ours_and_fails_only_a_refused_key() {
        use fred::interfaces::{KeysInterface, LuaInterface};
        let server = Server::start();
        let client = server.client().await;
        for (key, value) in [("mine", "t1"), ("theirs", "other"), ("mine2", "t5")] {
            let _: () = client
                .set(key, value, None, None, false)
                .await
                .expect("SET");
        }
        let _: Value = client
            .eval(
                "return redis.call('HSET', KEYS[1], 'f', 'v')",
                vec!["hash"],
                Vec::<String>::new(),
            )
            .await
            .expect("HSET");
        let keys = vec!["mine", "theirs", "gone", "hash", "mine2"];
        let tokens = vec!["t1", "t2", "t3", "t4", "t5"];
        let reply: Value = client
            .eval(RELEASE_MANY_LUA, keys.clone(), tokens)
            .await
            .expect("the script runs");
        let parsed = parse_released_many(&reply, keys.len()).expect("a well-formed reply");
        assert_eq!(parsed[0], Ok(true));
        assert_eq!(parsed[1], Ok(false));
        assert_eq!(parsed[2], Ok(false));
        assert!(
            matches!(&parsed[3], Err(e) if e.contains("WRONGTYPE")),
            "{parsed:?}"
        );
        assert_eq!(parsed[4], Ok(true));
        let left: i64 = client.exists(keys).await.expect("EXISTS");
        assert_eq!(left, 2, "only theirs and the hash stay");
        let theirs: Option<String> = client.get("theirs").await.expect("GET");
        assert_eq!(theirs.as_deref(), Some("other"));
        // A reply of another shape is refused, not guessed at.
        assert_eq!(parse_verified_many(&reply, 4), None);
        assert_eq!(parse_released_many(&reply, 4), None);
        assert_eq!(parse_released_many(&Value::Integer(1), 1), None);
        assert_eq!(
            parse_released_many(
                &Value::Array(vec![Value::Array(vec![Value::Integer(1)])]),
                1
            ),
            None
        );
    }

    /// Hand-over on a real server: a waiter that finds the key held leaves
    /// a claim (refreshed by its next run); a release gives the key to the
    /// oldest live claim by arrival, with the claim's expiry, and tells the
    /// claimant on its channel; a lapsed claim, or one of the releasing
    /// token, is passed over; a key with a fair queue is deleted; a run
    /// that takes the key takes its claim out.
    #[tokio::test]
    async fn a_release_hands_the_key_to_the_oldest_live_claim() {
        use fred::interfaces::{EventInterface, KeysInterface, LuaInterface, PubsubInterface};
        let server = Server::start();
        let client = server.client().await;
        // The commands on the claims' hash and the fair queue, through a
        // script (the client is built without fred's interfaces for them).
        let call = |args: Vec<&'static str>| {
            let client = client.clone();
            async move {
                let v: Value = client
                    .eval(
                        "return redis.call(ARGV[1], KEYS[1], unpack(ARGV, 2))",
                        vec![args[1]],
                        [&args[..1], &args[2..]].concat(),
                    )
                    .await
                    .expect("the command runs");
                v
            }
        };
        let listener = server.client().await;
        let mut messages = listener.message_rx();
        listener
            .subscribe(vec!["chA", "chB", "chC"])
            .await
            .expect("SUBSCRIBE");
        let acquire = |token: &'static str, mode: String, ms: u64| {
            let client = client.clone();
            async move {
                let reply: Value = client
                    .eval(
                        ACQUIRE_LUA,
                        vec!["k"],
                        vec![ms.to_string(), "PX".into(), "0".into(), token.into(), mode],
                    )
                    .await
                    .expect("the acquire script runs");
                parse_acquire(&reply, 1, false)
                    .expect("a well-formed reply")
                    .remove(0)
            }
        };
        // The same on another key, for 60 s.
        let acquire_at = |key: &'static str, token: &'static str, mode: &'static str| {
            let client = client.clone();
            async move {
                let reply: Value = client
                    .eval(
                        ACQUIRE_LUA,
                        vec![key],
                        vec!["60000", "PX", "0", token, mode],
                    )
                    .await
                    .expect("the acquire script runs");
                parse_acquire(&reply, 1, false).map(|mut v| v.remove(0))
            }
        };
        let release = |token: &'static str| {
            let client = client.clone();
            async move {
                let reply: Value = client
                    .eval(RELEASE_HANDOVER_LUA, vec!["k"], vec![token])
                    .await
                    .expect("the release script runs");
                parse_released_many(&reply, 1)
                    .expect("a well-formed reply")
                    .remove(0)
            }
        };
        async fn next_message(
            rx: &mut tokio::sync::broadcast::Receiver<fred::types::Message>,
        ) -> (String, String) {
            let m = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("a hand-over message")
                .expect("the listener is up");
            (
                m.channel.to_string(),
                m.value.as_string().unwrap_or_default(),
            )
        }
        call(vec!["SET", "k", "holder"]).await;
        // A and B find it held and claim; B arrived first. A's second run
        // refreshes A's claim (its command id and expiry).
        let held = KeyState::Other {
            forced: false,
            owner: None,
        };
        let ours = KeyState::Ours {
            pttl_ms: None,
            fence: None,
        };
        assert_eq!(
            acquire("tA", "NX|chA|200|7|0".into(), 60_000).await,
            Ok(held.clone())
        );
        assert_eq!(
            acquire("tB", "NX|chB|100|9|0".into(), 60_000).await,
            Ok(held.clone())
        );
        assert_eq!(
            acquire("tA", "NX|chA|200|8|1".into(), 60_000).await,
            Ok(held.clone())
        );
        let a = call(vec!["HGET", "{k}:c", "chA"])
            .await
            .as_string()
            .unwrap_or_default();
        assert!(a.starts_with("200 tA ") && a.ends_with(" 8"), "{a}");
        let b = call(vec!["HGET", "{k}:c", "chB"])
            .await
            .as_string()
            .unwrap_or_default();
        assert!(b.starts_with("100 tB ") && b.ends_with(" 9"), "{b}");
        let pttl: i64 = client.pttl("{k}:c").await.expect("PTTL");
        assert!(
            pttl > 50_000,
            "the claims live as long as the longest: {pttl}"
        );
        // The holder releases: B, the older, gets the key and is told.
        assert_eq!(release("holder").await, Ok(true));
        let now: Option<String> = client.get("k").await.expect("GET");
        assert_eq!(now.as_deref(), Some("tB"));
        let pttl: i64 = client.pttl("k").await.expect("PTTL");
        assert!(
            (50_000..=60_000).contains(&pttl),
            "the claim's expiry: {pttl}"
        );
        assert_eq!(
            next_message(&mut messages).await,
            ("chB".into(), "9 tB k".into())
        );
        // B releases: A's claim gets it.
        assert_eq!(release("tB").await, Ok(true));
        let now: Option<String> = client.get("k").await.expect("GET");
        assert_eq!(now.as_deref(), Some("tA"));
        assert_eq!(
            next_message(&mut messages).await,
            ("chA".into(), "8 tA k".into())
        );
        // Nobody claims: the release deletes.
        assert_eq!(release("tA").await, Ok(true));
        let left: i64 = client.exists("k").await.expect("EXISTS");
        assert_eq!(left, 0);
        // A claim that lapsed is passed over (and taken out); so is one of
        // the releasing token itself.
        call(vec!["SET", "k", "holder"]).await;
        assert_eq!(
            acquire("tC", "NX|chC|50|3|0".into(), 30).await,
            Ok(held.clone())
        );
        assert_eq!(
            acquire("holder", "NX|chA|10|4|0".into(), 60_000).await,
            Ok(ours.clone())
        );
        call(vec!["HSET", "{k}:c", "chA", "10 holder 99999999999999 4"]).await;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert_eq!(release("holder").await, Ok(true));
        let left: i64 = client.exists(vec!["k", "{k}:c"]).await.expect("EXISTS");
        assert_eq!(left, 0, "deleted, and both claims gone");
        // A run that takes the key (or finds it its own) takes its claim out.
        call(vec!["SET", "k", "holder"]).await;
        assert_eq!(
            acquire("tD", "NX|chA|5|1|0".into(), 60_000).await,
            Ok(held.clone())
        );
        let _: i64 = client.del("k").await.expect("DEL");
        assert_eq!(
            acquire("tD", "NX|chA|5|2|1".into(), 60_000).await,
            Ok(ours.clone())
        );
        let claimed = call(vec!["HEXISTS", "{k}:c", "chA"]).await;
        assert_eq!(claimed, Value::Integer(0), "the claim went with the take");
        // With a fair queue beside the key, a release deletes: the queue
        // decides who is next.
        assert_eq!(
            acquire("tE", "NX|chC|1|5|0".into(), 60_000).await,
            Ok(held.clone())
        );
        call(vec!["ZADD", "{k}:q", "1", "w"]).await;
        assert_eq!(release("tD").await, Ok(true));
        let left: i64 = client.exists("k").await.expect("EXISTS");
        assert_eq!(left, 0, "deleted, not handed");
        // A channel with `|` in it (a key prefix may have one) claims like
        // any other.
        call(vec!["SET", "k2", "holder"]).await;
        assert_eq!(
            acquire_at("k2", "tF", "NX|p|q:handover:1|7|3|0").await,
            Some(Ok(held.clone()))
        );
        let f = call(vec!["HGET", "{k2}:c", "p|q:handover:1"])
            .await
            .as_string()
            .unwrap_or_default();
        assert!(f.starts_with("7 tF ") && f.ends_with(" 3"), "{f}");
        // A claimant nobody hears for (no subscriber on its channel: its
        // locker is gone) is passed over, though it came first, and its
        // claim taken out; with only such claimants, the key is deleted.
        let _: i64 = client.del(vec!["k", "{k}:c", "{k}:q"]).await.expect("DEL");
        call(vec!["SET", "k", "holder"]).await;
        for (token, mode) in [
            ("tX", "NX|chX|1|1|0"),
            ("tA", "NX|chA|5|2|0"),
            ("tY", "NX|chY|9|3|0"),
        ] {
            assert_eq!(acquire(token, mode.into(), 60_000).await, Ok(held.clone()));
        }
        assert_eq!(release("holder").await, Ok(true));
        let now: Option<String> = client.get("k").await.expect("GET");
        assert_eq!(now.as_deref(), Some("tA"), "chX has no listener");
        assert_eq!(
            next_message(&mut messages).await,
            ("chA".into(), "2 tA k".into())
        );
        let left = call(vec!["HKEYS", "{k}:c"]).await;
        assert_eq!(left, Value::Array(vec!["chY".into()]), "chX's claim went");
        assert_eq!(release("tA").await, Ok(true));
        let left: i64 = client.exists(vec!["k", "{k}:c"]).await.expect("EXISTS");
        assert_eq!(left, 0, "chY has no listener: deleted, its claim gone");
        // A claim is taken back only under its own token: the locker's
        // next waiter's claim (same channel, another token) stays.
        call(vec!["SET", "k", "holder"]).await;
        assert_eq!(
            acquire("tB", "NX|chA|5|1|0".into(), 60_000).await,
            Ok(held.clone())
        );
        let unclaim = |token: &'static str| {
            let client = client.clone();
            async move {
                let v: Value = client
                    .eval(UNCLAIM_LUA, vec!["k"], vec!["chA", token])
                    .await
                    .expect("the unclaim script runs");
                v
            }
        };
        assert_eq!(unclaim("tA").await, Value::Integer(0));
        assert_eq!(call(vec!["HLEN", "{k}:c"]).await, Value::Integer(1));
        assert_eq!(unclaim("tB").await, Value::Integer(1));
        assert_eq!(call(vec!["HLEN", "{k}:c"]).await, Value::Integer(0));
        assert_eq!(unclaim("tB").await, Value::Integer(0), "not there");
        // Fencing: a run that claimed before and finds its token there was
        // handed the key, which moved no counter: it moves it. A retry of
        // our own that did not claim leaves it.
        call(vec!["SET", "k3", "tH"]).await;
        call(vec!["SET", "k3f", "5"]).await;
        let fenced = |mode: &'static str| {
            let client = client.clone();
            async move {
                let reply: Value = client
                    .eval(
                        ACQUIRE_LUA,
                        vec!["k3", "k3f"],
                        vec!["60000", "PX", "1", "tH", mode],
                    )
                    .await
                    .expect("the acquire script runs");
                parse_acquire(&reply, 1, true)
                    .expect("a well-formed reply")
                    .remove(0)
            }
        };
        let fence = |n| {
            Ok(KeyState::Ours {
                pttl_ms: None,
                fence: Some(n),
            })
        };
        assert_eq!(fenced("NX|chA|5|9|1").await, fence(6), "handed: fresh");
        assert_eq!(fenced("NX").await, fence(6), "a retry: unchanged");
        // A release given the counter (one instance, fencing) moves it as
        // it hands the key over, once, and the message carries the value
        // after the command id; the claimant passed over before (no
        // listener) moved nothing more. A release that deletes leaves it.
        call(vec!["SET", "k4", "holder"]).await;
        call(vec!["SET", "k4f", "5"]).await;
        for (token, mode) in [("tX", "NX|chX|1|1|0"), ("tA", "NX|chA|5|2|0")] {
            assert_eq!(acquire_at("k4", token, mode).await, Some(Ok(held.clone())));
        }
        let release_fenced = |token: &'static str| {
            let client = client.clone();
            async move {
                let reply: Value = client
                    .eval(RELEASE_HANDOVER_LUA, vec!["k4"], vec![token, "k4f"])
                    .await
                    .expect("the release script runs");
                parse_released_many(&reply, 1)
                    .expect("a well-formed reply")
                    .remove(0)
            }
        };
        assert_eq!(release_fenced("holder").await, Ok(true));
        assert_eq!(
            next_message(&mut messages).await,
            ("chA".into(), "2:6 tA k4".into())
        );
        let counter: Option<String> = client.get("k4f").await.expect("GET");
        assert_eq!(counter.as_deref(), Some("6"));
        assert_eq!(release_fenced("tA").await, Ok(true));
        let left: i64 = client.exists("k4").await.expect("EXISTS");
        assert_eq!(left, 0, "nobody claims: deleted");
        let counter: Option<String> = client.get("k4f").await.expect("GET");
        assert_eq!(counter.as_deref(), Some("6"), "a delete moves nothing");
        // Many keys in one call (a node's batch of releases): each key's
        // counter after the tokens, empty for none.
        for (key, holder) in [("k5", "h5"), ("k6", "h6")] {
            let _: () = client
                .set(key, holder, None, None, false)
                .await
                .expect("SET");
        }
        assert_eq!(
            acquire_at("k5", "tA", "NX|chA|5|3|0").await,
            Some(Ok(held.clone()))
        );
        let reply: Value = client
            .eval(
                RELEASE_HANDOVER_LUA,
                vec!["k5", "k6"],
                vec!["h5", "h6", "k5f", ""],
            )
            .await
            .expect("the release script runs");
        assert_eq!(
            parse_released_many(&reply, 2),
            Some(vec![Ok(true), Ok(true)])
        );
        assert_eq!(
            next_message(&mut messages).await,
            ("chA".into(), "3:1 tA k5".into())
        );
        let left: i64 = client.exists("k6").await.expect("EXISTS");
        assert_eq!(left, 0, "k6 had no claim: deleted");
    }

    #[test]
    fn tokens() {
        let fp = Fingerprint::new(2, 3);
        let a = Token::generate(false, fp);
        let b = Token::generate(false, fp);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 48 + 5);
        assert!(a.as_str().ends_with(":m2n3"));
        assert!(a.as_str().bytes().all(|c| c.is_ascii_graphic()));
        let f = Token::generate(true, fp);
        assert_eq!(f.as_str().len(), 49 + 5);
        assert!(Token::is_forced(f.as_str().as_bytes()));
        assert!(!Token::is_forced(a.as_str().as_bytes()));
        assert!(!Token::is_forced(b"Fxyz"));
        assert_eq!(a.short().len(), 8);
        assert!(a.short().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(Fingerprint::new(64, 127).to_string(), "m64n127");
        assert_eq!(
            Fingerprint::new(2, 3).with_permits(Some(5)).to_string(),
            "m2n3p5"
        );
        assert_eq!(
            Token::generate(true, Fingerprint::new(64, 127))
                .as_str()
                .len(),
            49 + 8
        );
    }

    #[test]
    fn the_longest_token_fits_and_a_token_is_one_small_allocation() {
        let widest = Fingerprint::new(usize::MAX, usize::MAX).with_permits(Some(u16::MAX));
        assert_eq!(widest.to_string(), "m65535n65535p65535");
        let t = Token::from_bytes(&[0xab; 24], true, widest);
        assert_eq!(t.as_str().len(), TOKEN_MAX);
        assert!(t.as_str().ends_with(":m65535n65535p65535"));
        // With the shared owner's two-word header: 88 bytes, a 96-byte
        // chunk of the system allocator.
        assert!(16 + std::mem::size_of::<TokenBuf>() <= 88);
    }

    fn other(forced: bool, owner: Option<Fingerprint>) -> KeyState {
        KeyState::Other { forced, owner }
    }

    /// Values written by others: only our own format yields a fingerprint, and
    /// nothing panics.
    #[test]
    fn owners() {
        let hex = "0123456789abcdef".repeat(3);
        let fp = |m, n| Some(Fingerprint::new(m, n));
        let cases: Vec<(String, KeyState)> = vec![
            (format!("{hex}:m1n1"), other(false, fp(1, 1))),
            (format!("F{hex}:m2n3"), other(true, fp(2, 3))),
            (format!("F{hex}:m64n127"), other(true, fp(64, 127))),
            // A semaphore's permit.
            (
                format!("{hex}:m2n3p5"),
                other(false, Some(Fingerprint::new(2, 3).with_permits(Some(5)))),
            ),
            // Tokens of a version without fingerprints: as before.
            (hex.clone(), other(false, None)),
            (format!("F{hex}"), other(true, None)),
            // Not ours: plain other owners.
            (format!("{hex}:m1"), other(false, None)),
            (format!("{hex}:mn1"), other(false, None)),
            (format!("{hex}:m1n"), other(false, None)),
            (format!("{hex}:m1n1x"), other(false, None)),
            (format!("{hex}:m1n1p"), other(false, None)),
            (format!("{hex}:m1n1p1p"), other(false, None)),
            (format!("{hex}:m1n1p999999"), other(false, None)),
            (format!("{hex}:m1p2n1"), other(false, None)),
            (format!("{hex}:m999999n1"), other(false, None)),
            (format!("{hex}:m-1n1"), other(false, None)),
            (format!("{hex}x"), other(false, None)),
            (format!("{hex}:"), other(false, None)),
            (hex[..47].to_owned(), other(false, None)),
            (format!("G{hex}:m1n1"), other(false, None)),
            ("F".to_owned(), other(false, None)),
            (String::new(), other(false, None)),
            ("intruder".to_owned(), other(false, None)),
        ];
        for (value, want) in cases {
            assert_eq!(Token::owner_state(value.as_bytes()), want, "{value:?}");
        }
        // The Go valkeylock's token: 24 raw bytes.
        let go: Vec<u8> = (0u8..24).map(|i| i.wrapping_mul(37)).collect();
        assert_eq!(Token::owner_state(&go), other(false, None));
        let mut multibyte = "é".repeat(24).into_bytes();
        multibyte.extend_from_slice(b":m1n1");
        assert_eq!(Token::owner_state(&multibyte), other(false, None));
    }

    #[test]
    fn replies() {
        let f = Token::new(true);
        let cases = [
            (
                Value::Integer(1),
                false,
                Some(KeyState::Ours {
                    pttl_ms: None,
                    fence: None,
                }),
            ),
            (Value::Integer(0), false, None),
            (
                Value::Integer(4500),
                true,
                Some(KeyState::Ours {
                    pttl_ms: Some(4500),
                    fence: None,
                }),
            ),
            (
                Value::Integer(-1),
                true,
                Some(KeyState::Ours {
                    pttl_ms: None,
                    fence: None,
                }),
            ),
            (Value::Null, false, Some(KeyState::Absent)),
            (Value::String("abc".into()), false, Some(other(false, None))),
            (
                Value::String(f.as_str().into()),
                true,
                Some(other(true, Some(Fingerprint::new(2, 1)))),
            ),
            (
                Value::Bytes(vec![0xff, 0].into()),
                false,
                Some(other(false, None)),
            ),
            (Value::Boolean(true), false, None),
        ];
        for (value, verify, want) in cases {
            assert_eq!(parse_key_state(&value, verify), want, "{value:?}");
        }
        let ours = |fence| KeyState::Ours {
            pttl_ms: None,
            fence,
        };
        let reply = Value::Array(vec![Value::Integer(1), Value::Integer(7)]);
        assert_eq!(
            parse_acquire(&reply, 1, true),
            Some(vec![Ok(ours(Some(7)))])
        );
        assert_eq!(parse_acquire(&reply, 2, false), None);
        let reply = Value::Array(vec![
            Value::Integer(1),
            Value::Null,
            Value::String("x".into()),
        ]);
        assert_eq!(
            parse_acquire(&reply, 3, false),
            Some(vec![
                Ok(ours(None)),
                Ok(KeyState::Absent),
                Ok(other(false, None))
            ])
        );
        // A key the server refused: its own error, the others unaffected;
        // with fencing, a refused first key carries no counter.
        let refused = || {
            Value::Array(vec![
                Value::Integer(0),
                Value::String("WRONGTYPE Operation against a key".into()),
            ])
        };
        let reply = Value::Array(vec![Value::Integer(1), refused(), Value::Null]);
        assert_eq!(
            parse_acquire(&reply, 3, false),
            Some(vec![
                Ok(ours(None)),
                Err("WRONGTYPE Operation against a key".to_owned()),
                Ok(KeyState::Absent)
            ])
        );
        let reply = Value::Array(vec![refused(), Value::Integer(3)]);
        assert_eq!(
            parse_acquire(&reply, 1, true),
            Some(vec![Err("WRONGTYPE Operation against a key".to_owned())])
        );
        // Other arrays are not markers.
        for bad in [
            Value::Array(vec![]),
            Value::Array(vec![Value::Integer(1), Value::String("x".into())]),
            Value::Array(vec![Value::Integer(0)]),
        ] {
            assert_eq!(
                parse_acquire(&Value::Array(vec![bad.clone()]), 1, false),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(parse_acquire(&Value::Integer(1), 1, false), None);
        // The one-key reader agrees with the general one on every reply.
        let one_key = [
            (
                Value::Array(vec![Value::Integer(1), Value::Integer(7)]),
                true,
            ),
            (
                Value::Array(vec![Value::Integer(1), Value::Integer(7)]),
                false,
            ),
            (Value::Array(vec![Value::Integer(1)]), false),
            (Value::Array(vec![Value::Integer(1)]), true),
            (Value::Array(vec![Value::Null]), false),
            (Value::Array(vec![Value::String("x".into())]), false),
            (Value::Array(vec![refused(), Value::Integer(3)]), true),
            (
                Value::Array(vec![Value::Integer(1), Value::String("x".into())]),
                true,
            ),
            (Value::Array(vec![]), false),
            (Value::Integer(1), false),
        ];
        for (reply, fence) in one_key {
            assert_eq!(
                parse_acquire_one(&reply, fence),
                parse_acquire(&reply, 1, fence).map(|mut v| v.swap_remove(0)),
                "{reply:?} fence {fence}"
            );
        }
        assert_eq!(
            parse_acquire(&Value::Array(vec![Value::Integer(0)]), 1, false),
            None
        );
        assert_eq!(parse_fence(&Value::Integer(9)), Some(9));
        assert_eq!(parse_fence(&Value::String("12".into())), Some(12));
        assert_eq!(parse_fence(&Value::Null), Some(0));
        assert_eq!(parse_fence(&Value::String("x".into())), None);
        assert_eq!(
            parse_fence_write(&Value::Array(vec![Value::Integer(1), Value::Integer(7)])),
            Some((true, 7))
        );
        assert_eq!(
            parse_fence_write(&Value::Array(vec![Value::Integer(0), Value::Integer(9)])),
            Some((false, 9))
        );
        assert_eq!(parse_fence_write(&Value::Integer(7)), None);
        assert_eq!(parse_released(&Value::Integer(1)), Some(true));
        assert_eq!(parse_released(&Value::Integer(0)), Some(false));
        assert_eq!(parse_released(&Value::Null), None);
    }

    /// `INSPECT_LUA`'s reply around a key's part, with nobody waiting.
    fn inspected(key: Value) -> Value {
        Value::Array(vec![
            key,
            Value::String("1700000000".into()),
            Value::String("500000".into()),
            Value::Array(vec![]),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ])
    }

    #[test]
    fn inspect_replies() {
        let present = |v: &[u8], pttl| Seen::Present {
            value: v.to_vec(),
            pttl_ms: pttl,
        };
        let odd = || Seen::Unreadable("unexpected reply to inspect".to_owned());
        let cases = [
            (inspected(Value::Array(vec![])), Seen::Absent),
            (
                inspected(Value::Array(vec![
                    Value::String("tok".into()),
                    Value::Integer(1500),
                ])),
                present(b"tok", Some(1500)),
            ),
            (
                inspected(Value::Array(vec![
                    Value::Bytes(vec![0xff, 1].into()),
                    Value::Integer(-1),
                ])),
                present(&[0xff, 1], None),
            ),
            (
                inspected(Value::Array(vec![
                    Value::Integer(0),
                    Value::String("WRONGTYPE Operation".into()),
                ])),
                Seen::Unreadable("WRONGTYPE Operation".to_owned()),
            ),
            (inspected(Value::Integer(3)), odd()),
            (
                inspected(Value::Array(vec![Value::String("tok".into())])),
                odd(),
            ),
            (
                inspected(Value::Array(vec![Value::Integer(7), Value::Integer(7)])),
                odd(),
            ),
        ];
        for (value, want) in cases {
            let look = parse_inspect(&value);
            assert_eq!(look.seen, want, "{value:?}");
            assert_eq!(look.waiting, Ok(vec![]), "{value:?}");
        }
        // The reply of a script before waiters were read, or of anything
        // else: unreadable, key and waiters alike.
        for value in [
            Value::Null,
            Value::Integer(3),
            Value::Array(vec![Value::String("tok".into()), Value::Integer(1500)]),
        ] {
            let look = parse_inspect(&value);
            assert_eq!(look.seen, odd(), "{value:?}");
            assert!(look.waiting.is_err(), "{value:?}");
        }
    }

    #[test]
    fn inspect_reads_who_waits() {
        let s = |t: &str| Value::String(t.to_owned().into());
        let flat = |items: &[&str]| Value::Array(items.iter().map(|t| s(t)).collect());
        // The server's clock: 1,700,000,000.5 s, so 1_700_000_000_500 ms.
        let reply = |claims: Value, queue: Value, deadlines: Value| {
            Value::Array(vec![
                Value::Array(vec![]),
                s("1700000000"),
                s("500000"),
                claims,
                queue,
                deadlines,
            ])
        };
        let now_us = 1_700_000_000_500_000u64;
        let claims = flat(&[
            // Live: arrived 2 s ago, lapses in 3 s.
            "valkeylock:handover:a",
            &format!("{} tokA 1700000003500 7", now_us - 2_000_000),
            // Lapsed a millisecond ago: the next release takes it out.
            "valkeylock:handover:b",
            "1 tokB 1700000000499 8",
            // Anyone may write the hash: malformed values are left out.
            "valkeylock:handover:c",
            "not a claim",
            "valkeylock:handover:d",
            "1 tokD 1700000009000 8 extra",
            "valkeylock:handover:e",
            "x tokE 1700000009000 8",
        ]);
        let queue = flat(&[
            "111", // arrived 5 s ago, as a score in exponent form
            &format!("{:e}", (now_us - 5_000_000) as f64),
            "222", // no deadline: the queue's next write takes it out
            "1700000000000000",
            "333", // past its deadline
            "1700000000000000",
            "444",
            "1700000000400000",
        ]);
        let deadlines = flat(&[
            "111",
            "1700000001500",
            "333",
            "1700000000500",
            "444",
            "1700000000600",
        ]);
        let look = parse_inspect(&reply(claims, queue, deadlines));
        assert_eq!(look.seen, Seen::Absent);
        let got = look.waiting.expect("read");
        assert_eq!(
            got,
            vec![
                Recorded {
                    claim: true,
                    who: b"tokA".to_vec(),
                    waited_us: 2_000_000,
                    lapses_in_ms: 3000,
                },
                Recorded {
                    claim: false,
                    who: b"111".to_vec(),
                    waited_us: 5_000_000,
                    lapses_in_ms: 1000,
                },
                Recorded {
                    claim: false,
                    who: b"444".to_vec(),
                    waited_us: 100_000,
                    lapses_in_ms: 100,
                },
            ]
        );
        // A refused read (an ACL without `+hgetall`) is the waiters' error,
        // not the key's.
        let refused = Value::Array(vec![Value::Integer(0), s("NOPERM no hgetall")]);
        let look = parse_inspect(&reply(refused.clone(), flat(&[]), flat(&[])));
        assert_eq!(look.seen, Seen::Absent);
        assert_eq!(look.waiting, Err("NOPERM no hgetall".to_owned()));
        let look = parse_inspect(&reply(flat(&[]), flat(&[]), refused));
        assert_eq!(look.waiting, Err("NOPERM no hgetall".to_owned()));
        // A clock that is not a number, or an entry that is not a string.
        let mut odd = reply(flat(&[]), flat(&[]), flat(&[]));
        if let Value::Array(parts) = &mut odd {
            parts[1] = s("soon");
        }
        assert!(parse_inspect(&odd).waiting.is_err());
        let nested = Value::Array(vec![Value::Array(vec![]), Value::Array(vec![])]);
        assert!(parse_inspect(&reply(nested, flat(&[]), flat(&[])))
            .waiting
            .is_err());
    }
}
