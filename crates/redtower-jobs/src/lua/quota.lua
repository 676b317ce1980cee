-- Quota prelude (work and admin scripts): fair groups and the per-group concurrency limit.
-- The script sets the four group keys (all in the queue's hash tag) before using them:
--   K_GF    ZSET  group -> its last turn (pruned once the turn is at or below V)
--   K_GHELD ZSET  score 0, members '<group>\0<score, 16 digits>\0<id>': jobs fetched while
--                 their group was at its concurrency limit, oldest first per group
--   K_GACT  HASH  group -> running jobs (only while the per-group limit is set)
--   K_GJOB  HASH  running job id -> its group (same)
-- Meta fields: rl_n, rl_ms (rate), conc, gconc (limits), tat (GCRA, us), hold (no start
-- before, ms), vt (V: the highest turn handed to a worker), fu (last turn of ungrouped jobs).
local K_GF, K_GHELD, K_GACT, K_GJOB

-- Puts one held job of group `g` back to ready (skipping held entries whose job is gone).
-- Whether one went back.
local function release_held(g)
  for _ = 1, 10 do
    local h = redis.call('ZRANGEBYLEX', K_GHELD, '[' .. g .. '\0', '(' .. g .. '\1', 'LIMIT', 0, 1)
    if not h[1] then return false end
    redis.call('ZREM', K_GHELD, h[1])
    local hid = string.sub(h[1], #g + 19)
    local raw = redis.call('HGET', K_JOBS, hid)
    if raw then
      local rec = decode(raw)
      if rec then
        ready_add(hid, rec)
        return true
      end
    end
  end
  return false
end

-- Jobs `ids` stopped running (settled, lease lost, removed): their groups' counts go down and
-- one held job per freed slot goes back to ready. Only jobs counted in K_GJOB are affected.
local function groups_done(ids)
  if #ids == 0 or redis.call('EXISTS', K_GJOB) == 0 then return false end
  local gs = hmget(K_GJOB, ids)
  local woke = false
  for i, g in ipairs(gs) do
    if g then
      redis.call('HDEL', K_GJOB, ids[i])
      if redis.call('HINCRBY', K_GACT, g, -1) <= 0 then redis.call('HDEL', K_GACT, g) end
      if release_held(g) then woke = true end
    end
  end
  return woke
end

-- The held-set member of job `id` of group `g` with ready score `score`.
local function held_member(g, id, score)
  return g .. '\0' .. string.format('%016.0f', score) .. '\0' .. id
end
