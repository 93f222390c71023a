-- Switchboard's presence in Redis: one script, one operation per call, so that each
-- operation is one atomic round trip. ARGV[1] is the operation, ARGV[2] the key prefix.
-- Key layout, expiry and reaping rules: docs/presence-redis.md.
--
-- Every entry's score is its expiry (Redis time, ms): reads count only entries whose
-- expiry is now or later, so a dead node's entries stop counting within the TTL even
-- before they are reaped. Nothing here lists a room: each operation touches O(1) entries
-- (O(rooms of one connection) for a disconnect or a reap, O(limit) for a page).

local op, P = ARGV[1], ARGV[2]

local CONNS = P .. 'conns'
local ROOMS = P .. 'rooms'
local function kc(c) return P .. 'c:' .. c end
local function kcr(c) return P .. 'cr:' .. c end
local function kud(u) return P .. 'ud:' .. u end
local function krc(r) return P .. 'rc:' .. r end
local function krl(r) return P .. 'rl:' .. r end
local function kre(r) return P .. 're:' .. r end
local function kri(r) return P .. 'ri:' .. r end
-- Two free-form parts: the room's length makes the key unambiguous.
local function kru(r, u) return P .. 'ru:' .. #r .. ':' .. r .. u end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function alive(score, now)
  return score and tonumber(score) >= now
end

local function counts(r, now)
  return {
    redis.call('ZCOUNT', kre(r), now, '+inf'),
    redis.call('ZCOUNT', krc(r), now, '+inf'),
  }
end

-- A member's expiry is its latest connection's; with none left it is no member.
local function user_sync(r, u)
  local top = redis.call('ZRANGE', kru(r, u), -1, -1, 'WITHSCORES')
  if top[1] then
    redis.call('ZADD', kre(r), top[2], u)
  else
    redis.call('ZREM', krl(r), u)
    redis.call('ZREM', kre(r), u)
    redis.call('HDEL', kri(r), u)
  end
end

-- Adds connection c of user u to room r, or refreshes it.
local function room_put(r, c, u, info, exp, now, keep)
  local ru = kru(r, u)
  if redis.call('EXISTS', ru) == 0 then
    redis.call('ZADD', krl(r), 0, u)
    redis.call('HSET', kri(r), u, now .. ':' .. info)
  end
  redis.call('ZADD', krc(r), exp, c)
  redis.call('ZADD', ru, exp, c)
  redis.call('PEXPIRE', ru, keep)
  -- The member's expiry is the latest of its connections': this one is the latest.
  redis.call('ZADD', kre(r), 'GT', exp, u)
  redis.call('SADD', ROOMS, r)
end

-- A room's keys outlive its last write by `keep`, so that nothing stays forever.
local function room_keep(r, keep)
  redis.call('PEXPIRE', ROOMS, keep)
  redis.call('PEXPIRE', krc(r), keep)
  redis.call('PEXPIRE', krl(r), keep)
  redis.call('PEXPIRE', kre(r), keep)
  redis.call('PEXPIRE', kri(r), keep)
end

local function room_del(r, c, u)
  if redis.call('ZREM', krc(r), c) == 0 then
    return
  end
  redis.call('ZREM', kru(r, u), c)
  user_sync(r, u)
  if redis.call('EXISTS', krc(r)) == 0 then
    redis.call('DEL', krl(r), kre(r), kri(r))
    redis.call('SREM', ROOMS, r)
  end
end

-- Records connection c (a device, or a connection that only joins rooms) as this
-- instance's, alive until exp.
local function conn_put(c, u, info, transport, dev, exp, node, inst)
  local k = kc(c)
  redis.call('HSET', k, 'uid', u, 'user', info, 'transport', transport, 'node', node, 'inst', inst)
  if dev then
    redis.call('HSET', k, 'dev', '1')
    redis.call('ZADD', kud(u), exp, c)
  else
    redis.call('HSETNX', k, 'dev', '0')
  end
  redis.call('ZADD', CONNS, exp, c)
end

local function conn_keep(c, u, keep)
  redis.call('PEXPIRE', CONNS, keep)
  redis.call('PEXPIRE', kc(c), keep)
  redis.call('PEXPIRE', kcr(c), keep)
  redis.call('PEXPIRE', kud(u), keep)
end

-- Whether instance inst may remove c: it is its own, or nobody's (a connection id
-- taken over by another node belongs to that node now).
local function owned(c, inst)
  local owner = redis.call('HGET', kc(c), 'inst')
  return not owner or owner == inst
end

-- Removes connection c from every room and from the devices; answers its user id.
local function forget(c, u_arg)
  local k = kc(c)
  local u = redis.call('HGET', k, 'uid') or u_arg
  for _, r in ipairs(redis.call('SMEMBERS', kcr(c))) do
    room_del(r, c, u)
  end
  redis.call('DEL', k, kcr(c))
  redis.call('ZREM', CONNS, c)
  redis.call('ZREM', kud(u), c)
  return u
end

local ops = {}

-- c, uid, user json, transport, node, inst, ttl, keep -> the user's live devices
function ops.connect()
  local c, u, info, transport = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local node, inst, ttl, keep = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
  local now = now_ms()
  conn_put(c, u, info, transport, true, now + ttl, node, inst)
  conn_keep(c, u, keep)
  return redis.call('ZCOUNT', kud(u), now, '+inf')
end

-- c, uid, inst
function ops.disconnect()
  local c, u, inst = ARGV[3], ARGV[4], ARGV[5]
  if owned(c, inst) then
    forget(c, u)
  end
  return 0
end

-- inst, then pairs of (c, uid): removals that failed before, retried by a heartbeat
function ops.forget()
  local inst = ARGV[3]
  for i = 4, #ARGV - 1, 2 do
    if owned(ARGV[i], inst) then
      forget(ARGV[i], ARGV[i + 1])
    end
  end
  return 0
end

-- room, c, uid, user json, transport, node, inst, ttl, keep -> {users, connections}
function ops.join()
  local r, c, u, info, transport = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local node, inst, ttl, keep = ARGV[8], ARGV[9], tonumber(ARGV[10]), ARGV[11]
  local now = now_ms()
  local exp = now + ttl
  conn_put(c, u, info, transport, false, exp, node, inst)
  redis.call('SADD', kcr(c), r)
  room_put(r, c, u, info, exp, now, keep)
  conn_keep(c, u, keep)
  room_keep(r, keep)
  return counts(r, now)
end

-- room, c, uid, inst
function ops.leave()
  local r, c, u, inst = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local k = kc(c)
  if not owned(c, inst) then
    return 0
  end
  u = redis.call('HGET', k, 'uid') or u
  room_del(r, c, u)
  redis.call('SREM', kcr(c), r)
  -- A connection that is no device lives only in rooms.
  if redis.call('HGET', k, 'dev') ~= '1' and redis.call('EXISTS', kcr(c)) == 0 then
    redis.call('DEL', k)
    redis.call('ZREM', CONNS, c)
  end
  return 0
end

-- node, inst, ttl, keep, then per connection: c, uid, user json, transport, dev (1/0),
-- n, and its n rooms. Re-asserts each connection exactly as this node has it: refreshed,
-- recreated if Redis lost it, and out of the rooms it is no longer in.
function ops.beat()
  local node, inst, ttl, keep = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
  local now = now_ms()
  local exp = now + ttl
  local touched = {}
  local i = 7
  while i <= #ARGV do
    local c, u, info, transport = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local dev, n = ARGV[i + 4] == '1', tonumber(ARGV[i + 5])
    i = i + 6
    conn_put(c, u, info, transport, dev, exp, node, inst)
    local want = {}
    for j = i, i + n - 1 do
      local r = ARGV[j]
      want[r] = true
      touched[r] = true
      redis.call('SADD', kcr(c), r)
      room_put(r, c, u, info, exp, now, keep)
    end
    i = i + n
    for _, r in ipairs(redis.call('SMEMBERS', kcr(c))) do
      if not want[r] then
        room_del(r, c, u)
        redis.call('SREM', kcr(c), r)
      end
    end
    conn_keep(c, u, keep)
  end
  for r in pairs(touched) do
    room_keep(r, keep)
  end
  return 0
end

-- inst, limit -> {popped, {{c, user json, transport, last (1/0), {rooms}}, ...}}
-- Pops connections whose expiry passed (their node stopped heartbeating) and removes
-- them. Devices of other instances are answered; this instance's own (removals that
-- never reached Redis) and room-only connections go silently.
function ops.reap()
  local inst, limit = ARGV[3], tonumber(ARGV[4])
  local now = now_ms()
  local ids = redis.call('ZRANGEBYSCORE', CONNS, '-inf', '(' .. now, 'LIMIT', 0, limit)
  local out = {}
  for _, c in ipairs(ids) do
    local h = redis.call('HMGET', kc(c), 'uid', 'user', 'transport', 'dev', 'inst')
    local rooms = redis.call('SMEMBERS', kcr(c))
    local u = h[1]
    if u then
      forget(c, u)
    else
      redis.call('ZREM', CONNS, c)
      redis.call('DEL', kcr(c))
    end
    if u and h[2] and h[4] == '1' and h[5] ~= inst then
      local last = redis.call('EXISTS', kud(u)) == 0 and 1 or 0
      out[#out + 1] = { c, h[2], h[3] or '', last, rooms }
    end
  end
  return { #ids, out }
end

-- room -> {users, connections}
function ops.counts()
  return counts(ARGV[3], now_ms())
end

-- uid -> live devices
function ops.devices()
  return redis.call('ZCOUNT', kud(ARGV[3]), now_ms(), '+inf')
end

-- uid -> client ids of the live devices
function ops.device_ids()
  return redis.call('ZRANGEBYSCORE', kud(ARGV[3]), now_ms(), '+inf')
end

-- room, cursor ('' for the first page), limit -> {next cursor or '', uid, info, ...}
-- where info is '<joinedAt>:<user json>'. Members are in lexicographic order of user id;
-- expired ones are skipped, at most `budget` of them per page.
function ops.members()
  local r, cursor, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local now = now_ms()
  local out = { '' }
  if limit <= 0 then
    return out
  end
  local batch = math.min(limit + 1, 512)
  local budget = 4 * limit + 256
  local start = cursor == '' and '-' or '(' .. cursor
  local found, scanned = 0, 0
  while true do
    local ids = redis.call('ZRANGEBYLEX', krl(r), start, '+', 'LIMIT', 0, batch)
    if #ids == 0 then
      return out
    end
    local scores = redis.call('ZMSCORE', kre(r), unpack(ids))
    for i, u in ipairs(ids) do
      if alive(scores[i], now) then
        if found == limit then
          out[1] = out[#out - 1]
          return out
        end
        found = found + 1
        out[#out + 1] = u
        out[#out + 1] = redis.call('HGET', kri(r), u) or ''
      end
    end
    scanned = scanned + #ids
    if #ids < batch then
      return out
    end
    start = '(' .. ids[#ids]
    if scanned >= budget then
      -- Mostly expired entries: resume after the last one looked at.
      out[1] = ids[#ids]
      return out
    end
  end
end

-- room, except, limit -> {c, info, ...}, info as for members
function ops.peers()
  local r, except, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local now = now_ms()
  local out = {}
  if limit <= 0 then
    return out
  end
  local ids = redis.call('ZRANGEBYSCORE', krc(r), now, '+inf', 'LIMIT', 0, limit + 1)
  for _, c in ipairs(ids) do
    if c ~= except and #out < 2 * limit then
      local u = redis.call('HGET', kc(c), 'uid')
      local info = u and redis.call('HGET', kri(r), u)
      if info then
        out[#out + 1] = c
        out[#out + 1] = info
      end
    end
  end
  return out
end

-- c, room... -> 1 if c is in one of the rooms
function ops.in_any()
  local c, now = ARGV[3], now_ms()
  for i = 4, #ARGV do
    if alive(redis.call('ZSCORE', krc(ARGV[i]), c), now) then
      return 1
    end
  end
  return 0
end

-- room, uid -> 1 if the user has a live connection in the room
function ops.has_user()
  return alive(redis.call('ZSCORE', kre(ARGV[3]), ARGV[4]), now_ms()) and 1 or 0
end

-- cursor, count -> {next cursor, room, users, connections, ...}: one SSCAN page of
-- the rooms, forgetting those whose keys are gone.
function ops.rooms()
  local now = now_ms()
  local page = redis.call('SSCAN', ROOMS, ARGV[3], 'COUNT', ARGV[4])
  local out = { page[1] }
  for _, r in ipairs(page[2]) do
    if redis.call('EXISTS', krc(r)) == 0 then
      redis.call('SREM', ROOMS, r)
    else
      local n = counts(r, now)
      if n[2] > 0 then
        out[#out + 1] = r
        out[#out + 1] = n[1]
        out[#out + 1] = n[2]
      end
    end
  end
  return out
end

local f = ops[op]
if not f then
  return redis.error_reply('unknown presence operation ' .. tostring(op))
end
return f()
