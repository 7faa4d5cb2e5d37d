import psycopg

from tests.conftest import new_database


def test_servers_start_and_accept_password_less_urls(pg, pg15):
    for cluster, major in ((pg, 18), (pg15, 15)):
        with psycopg.connect(new_database(cluster)) as conn:
            assert conn.info.server_version // 10000 == major
