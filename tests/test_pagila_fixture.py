from tests.conftest import content_checksums


def test_pagila_fixture_has_rows_in_every_kind_of_table(pagila_db):
    sums = content_checksums(pagila_db)
    assert sums["public.film_embedding"][0] == 200
    assert sums["public.payment_p2022_01"][0] > 0
    assert sum(count for count, _ in sums.values()) > 5000
