-- A retried enrolment is answered only shortly after the agent's first one (ENROL_RETRY_WINDOW):
-- enrolled_at moves with every retry, so the first time is kept on its own.
ALTER TABLE enrolment_agents ADD COLUMN first_enrolled_at timestamptz;
UPDATE enrolment_agents SET first_enrolled_at = enrolled_at;
ALTER TABLE enrolment_agents ALTER COLUMN first_enrolled_at SET NOT NULL;
