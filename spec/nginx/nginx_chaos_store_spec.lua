-- Chaos on a software set's key states under real nginx
-- (helpers/chaos_store.lua says what each file proves): the emergency
-- rotation under the client, then the damages that break the row's encoding.
require("helpers.chaos_store").describe("encoding", _ENV, true)
