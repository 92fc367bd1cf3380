"""The labeler's flow in a real browser (Debian's headless Chromium, driven by Selenium
through Debian's chromedriver): sign in, get the top clip with its audio and the model's
hypothesis filled in, correct it, submit with Enter, skip with Ctrl+Shift+S; the database
has the label and the skip."""
import shutil

import pytest
from sqlalchemy import select

from active_learning.queue.models import Clip, Label, User
from queue_helpers import PASSWORD, QueueServer, make_clips, make_queue

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium or chromedriver not found: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # the system's browser; nothing is downloaded
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.mark.timeout(180)
def test_labeler_signs_in_corrects_the_hypothesis_and_submits_with_the_keyboard(browser, tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    clips = make_clips(tmp_path / "clips", 2)
    clips[0].meta["hypothesis"] = "helo wrld"
    sessions = make_queue(url, clips, {"ann": "labeler"})
    server = QueueServer(url, log_path=tmp_path / "server.log").start()
    wait = WebDriverWait(browser, 20)
    try:
        browser.get(server.base + "/")
        wait.until(lambda d: d.current_url.endswith("/login"))  # not signed in yet
        browser.find_element(By.ID, "name").send_keys("ann")
        browser.find_element(By.ID, "password").send_keys(PASSWORD + Keys.ENTER)

        box = wait.until(lambda d: d.find_element(By.ID, "transcript") if d.find_element(
            By.ID, "transcript").get_attribute("value") else False)
        assert box.get_attribute("value") == "helo wrld"  # the model's hypothesis, prefilled
        assert browser.find_element(By.ID, "utt-id").text == "clip0000"  # the top score first
        # the audio player has the clip: its metadata loads from the app
        wait.until(lambda d: d.execute_script("return document.getElementById('player').readyState") >= 1)
        duration = browser.execute_script("return document.getElementById('player').duration")
        assert duration == pytest.approx(0.3, abs=0.05)

        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE, " ", Keys.ENTER)  # an empty transcript is refused, and says why
        wait.until(lambda d: "transcript is empty" in d.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "utt-id").text == "clip0000"  # still this clip
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys("hello world")
        box.send_keys(Keys.ENTER)  # submit
        wait.until(lambda d: d.find_element(By.ID, "utt-id").text == "clip0001")
        assert browser.find_element(By.ID, "transcript").get_attribute("value") == "hyp 1"

        browser.find_element(By.ID, "transcript").send_keys(Keys.CONTROL, Keys.SHIFT, "s")  # skip
        wait.until(lambda d: "Nothing left" in d.find_element(By.ID, "status").text)
    finally:
        server.stop()
    with sessions() as db:
        rows = db.execute(select(Clip.utt_id, User.name, Label.action, Label.text)
                          .join(Label, Label.clip_id == Clip.id).join(User, User.id == Label.user_id)
                          .order_by(Clip.utt_id)).all()
    assert [tuple(r) for r in rows] == [("clip0000", "ann", "label", "hello world"),
                                        ("clip0001", "ann", "skip", None)]
