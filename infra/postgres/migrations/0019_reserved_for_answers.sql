-- Placeholder so this branch (oncall, issue #32) migrates on its own: 0019 and 0020 belong to
-- the answers branch. DELETE THIS FILE AT MERGE; the real migration of that number replaces it.
-- Creates no table.
SELECT 1;
