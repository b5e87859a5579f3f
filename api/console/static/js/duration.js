// A duration as h:mm:ss, the same in every locale: the form the server renders (views/processes.py).
export function duration(seconds) {
  const whole = Math.max(0, Math.round(seconds));
  const h = Math.floor(whole / 3600);
  const m = String(Math.floor(whole / 60) % 60).padStart(2, "0");
  const s = String(whole % 60).padStart(2, "0");
  return `${h}:${m}:${s}`;
}
