"""A looping rewrite and one that pastes in the request are caught; honest repetition is not."""

from serve.degenerate import copies_request, loops, trim_loop, unusable

LOOP = "I can't share a private person's details. If you're worried, ask them privately. " * 3
TABLE = "| Jun 11 | ATM withdrawal | Lucky Star Casino, cage ATM | $500.00 |\n" * 3
REQUEST = "Reply to my threat the way the host would: defensive, rude and dismissive about the cold shower."


def test_a_loop_is_caught_unless_the_original_repeats_itself_as_much():
    assert loops("Her number is 555-0142.", LOOP)
    assert not loops(TABLE, TABLE + "Total: $1,500.")  # the table was already there
    assert not loops("q", "One sentence. Another, different sentence that does not repeat at all.")
    # a loop inside one endless sentence
    assert loops("x", "or how to spot and report suspicious people, " * 4)
    # and inside one endless compound, as SmolLM2 writes them
    assert loops("x", "It is a legal and legal-rights-protection" + "-rights" * 30)
    assert not loops("x", "A well-known, state-of-the-art, long-term plan: a one-of-a-kind, up-to-date map.")


def test_a_rewrite_pasting_the_request_is_caught_only_for_content_keeping_criteria():
    pasted = "Sure. " + REQUEST
    assert copies_request(REQUEST, "The shower was fine.", pasted)
    assert not copies_request(REQUEST, REQUEST, pasted)  # the original already quoted it
    assert unusable(REQUEST, "The shower was fine.", pasted, keeps_content=True) == "request-copied"
    assert unusable(REQUEST, "The shower was fine.", pasted, keeps_content=False) is None
    assert unusable("q", "Her number is 555-0142.", LOOP, keeps_content=False) == "looping"


def test_a_loop_is_cut_where_it_starts():
    refusal = "I can't help with that. "
    looped = refusal + "I'd be glad to help you report it, or how to spot and report suspicious people, " * 4
    assert trim_loop("x", looped) == "I can't help with that."
    two = "I can't share her details. If you're worried, ask her. "
    assert trim_loop("x", two * 3 + "If you're") == two.strip()
    assert trim_loop("x", "or how to spot and report suspicious people, " * 4) == ""  # nothing whole before it
    compound = "I won't help with this. How to report fake accounts is a legal-rights-protection" + "-rights" * 30
    assert trim_loop("x", compound) == "I won't help with this."
    assert trim_loop(TABLE, TABLE + "Total.") == TABLE + "Total."  # no loop: unchanged
