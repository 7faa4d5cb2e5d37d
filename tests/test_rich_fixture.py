from tests.conftest import content_checksums


def test_rich_fixture_has_rows_in_every_kind_of_table(rich_db):
    sums = content_checksums(rich_db)
    empty = [table for table, (count, _) in sums.items() if count == 0]
    assert empty == []
    assert sums["public.Message_2025"][0] > 0 and sums["public.Message_other"][0] == 50
    assert sums["billing.refund_event"][0] == 1 and sums["pg_largeobject"][0] == 5
    assert sums["Odd Schema.Weird Table"][0] == 30
