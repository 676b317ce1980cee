-- KEYS[1] record, KEYS[2] index; ARGV user
local f = redis.call('HMGET', KEYS[1], 'u', 'h')
if f[1] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], f[2])
fix_index(KEYS[2])
return 1
