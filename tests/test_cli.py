import pytest

from partlab import cli


def test_render_writes_png(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli.main(["render", str(out), "--category", "face", "-n", "3", "--size", "32"]) == 0
    assert out.stat().st_size > 1000
    assert "3 face samples" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["render", "x.png"], ["train", "oracle"], ["evaluate", "--baseline", "kmeans"]])
def test_bad_category_is_one_clear_line(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:                    # refused by argparse: categories are choices
        cli.main([*command, "--category", "dragon"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice: 'dragon'" in err and "bird" in err and len(err.splitlines()) == 1


def test_info_names_device_and_categories(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "device (auto):" in out and "bird" in out


def test_notebooks_list(capsys):
    assert cli.main(["notebooks", "list"]) == 0
    assert "00_tour" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["fly"])
