-- The hottest read (a token check's user row) in one round trip: the
-- function sets the transaction's tenant and reads the row as the caller
-- (SECURITY INVOKER: row-level security applies as for any query of the
-- service), so an autocommitted `SELECT ... FROM authd_user_by_id(...)`
-- replaces BEGIN, set_config, SELECT and COMMIT. `is_local` confines the
-- setting to that one statement's transaction.
CREATE FUNCTION authd_user_by_id(p_tenant uuid, p_id uuid)
RETURNS SETOF users
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    RETURN QUERY SELECT * FROM users WHERE tenant_id = p_tenant AND id = p_id;
END
$$;
REVOKE ALL ON FUNCTION authd_user_by_id(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authd_user_by_id(uuid, uuid) TO authd_app;
