-- Chaos on a software set's key states under real nginx
-- (helpers/chaos_store.lua): a rival row naming every key current, the row
-- deleted.
require("helpers.chaos_store").describe("rivals", _ENV)
